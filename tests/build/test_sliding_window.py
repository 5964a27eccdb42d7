"""A sliding window is built into the network (each local layer's mask: position - window < slot <= position).

Reported: a tiny Mistral with ``sliding_window=4`` built without a word, and the builder's graph (executed on
torch) was off by about 1.0 in the logits, while the torch backend matched transformers. The window was then
refused; now the mask computes it (tests/test_executor_parity.py: ``mistral-window-4`` against transformers,
tests/build/test_gemma_build.py: Gemma 2/3's local layers over 32 greedy tokens).
"""

from __future__ import annotations

import pytest
from checkpoints import layout_config, random_checkpoint
from conftest import run_cli

from ckptfmt import model_spec

LIMITS = ["--max_batch_size", "1", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm86"]


@pytest.mark.trt
def test_window_shorter_than_the_sequences_builds(tmp_path):
    ckpt = random_checkpoint(tmp_path / "mistral", layout_config("llama-gqa", sliding_window=4))
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", *LIMITS)
    assert rc == 0, err
    assert (tmp_path / "out" / "rank0.engine").stat().st_size > 0


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
