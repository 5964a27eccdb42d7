"""A sliding window the builder's network cannot honour is refused, never built into a silently different engine.

Reported: a tiny Mistral with ``sliding_window=4`` built without a word, and the builder's graph (executed on
torch) was off by about 1.0 in the logits, while the torch backend matched transformers.
"""

from __future__ import annotations

import pytest
from checkpoints import layout_config, random_checkpoint
from conftest import run_cli

from ckptfmt import model_spec

LIMITS = ["--max_batch_size", "1", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm86"]


def test_window_shorter_than_the_sequences_is_refused(tmp_path):
    ckpt = random_checkpoint(tmp_path / "mistral", layout_config("llama-gqa", sliding_window=4))
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", *LIMITS)
    assert rc == 1 and "Traceback" not in err, err
    assert "sliding_window: 4 is not supported by ckpt-build" in err and "torch backend supports it" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "window"),
    [({"sliding_window": 4096}, 4096), ({"sliding_window": 4, "use_sliding_window": False}, None), ({}, None)],
)
def test_the_window_is_declared_once_in_the_model_spec(extra, window):
    assert model_spec(layout_config("llama-gqa", **extra)).sliding_window == window


@pytest.mark.trt
def test_window_the_sequences_never_reach_builds(tmp_path):
    ckpt = random_checkpoint(tmp_path / "mistral", layout_config("llama-gqa", sliding_window=4096))
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", *LIMITS)
    assert rc == 0, err
