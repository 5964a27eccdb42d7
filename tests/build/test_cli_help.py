"""``ckpt-build --help`` reads cleanly: every core flag explained, defaults shown, no reST markup."""

from __future__ import annotations

import contextlib
import io

import pytest

from ckpt_build.cli import parser


def test_help_shows_defaults_and_no_markup():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = " ".join(out.getvalue().split())  # unwrap argparse's line breaks
    assert "``" not in text
    assert "(default: ./engine_outputs)" in text
    assert "largest batch the engines accept (default: 8)" in text
    assert "--skip_checksum" in text and "Ctrl-C" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    core = ["checkpoint_dir", "output_dir", "max_batch_size", "max_input_len", "max_output_len", "max_seq_len"]
    for action in parser()._actions:
        if action.dest in core + ["backend", "target", "workers", "overwrite", "log_level", "logits_dtype"]:
            assert action.help, f"--{action.dest} has no help text"
