"""Hostile numbers in config.json and a full disk: one line naming the file and what to do, never a traceback."""

from __future__ import annotations

import json
import resource
import signal
import subprocess

import pytest

from tests.reliability.helpers import CONSOLE, assert_failed_cleanly, convert_here


def _set(model, field: str, raw: str) -> None:
    """Write ``field: raw`` into config.json verbatim (``1e400`` is not representable through json.dumps)."""
    config = json.loads((model / "config.json").read_text())
    config[field] = "@@"
    (model / "config.json").write_text(json.dumps(config).replace('"@@"', raw))


@pytest.mark.parametrize(
    ("field", "raw", "says"),
    [
        ("hidden_size", "1e400", "field hidden_size is not a finite number"),
        ("rope_theta", "1e400", "field rope_theta is not a finite number"),
        ("rms_norm_eps", "NaN", "field rms_norm_eps is not a finite number"),
        ("num_attention_heads", "0", "field num_attention_heads must be a positive integer"),
        ("hidden_size", "-64", "field hidden_size must be a positive integer"),
        ("num_key_value_heads", "0", "num_key_value_heads"),
    ],
)
def test_bad_number_is_one_line(model, tmp_path, capsys, field, raw, says):
    _set(model, field, raw)
    out = tmp_path / "out"
    rc, _, err = convert_here("hf", "--model_dir", model, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, str(model / "config.json"), says)


def test_nested_infinity_is_named(model, tmp_path, capsys):
    config = json.loads((model / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": "@@"}
    (model / "config.json").write_text(json.dumps(config).replace('"@@"', "-1e999"))
    out = tmp_path / "out"
    rc, _, err = convert_here("hf", "--model_dir", model, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, "field rope_scaling.factor is not a finite number")


def _full_disk_after(limit: int):
    def apply() -> None:  # writes past ``limit`` bytes fail like a full disk (EFBIG instead of ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_full_disk_while_copying_the_tokenizer_names_the_output(model, tmp_path):
    """The rank files fit, the (large) tokenizer.json does not: the output is named, not the source file."""
    vocab = ",".join(f'"t{i}": {i}' for i in range(75000))
    (model / "tokenizer.json").write_text('{"model": {"vocab": {' + vocab + "}}}")
    out = tmp_path / "out"
    proc = subprocess.run(
        [CONSOLE, "hf", "--model_dir", str(model), "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_full_disk_after(600 * 1024),  # rank0: 426 kB, tokenizer.json: 900 kB
    )
    assert_failed_cleanly(proc.returncode, proc.stderr, out, f"writing {out}: File too large", "--output_dir")
    assert "tokenizer.json" not in proc.stderr
