"""Checkpoints exported by NVIDIA ModelOpt 0.47 (tests/fixtures/modelopt) build and compute their HF model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli

from ckpt_build.execute import TorchRanks
from ckpt_build.limits import Limits

FIXTURES = Path(__file__).parents[1] / "fixtures" / "modelopt"
EXPORTS = sorted(p for p in FIXTURES.glob("*/tp*") if (p / "config.json").exists())
PROMPT = [5, 17, 99, 3, 42, 7, 200, 11]


@pytest.mark.trt
@pytest.mark.parametrize("export", EXPORTS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_modelopt_export_builds(tmp_path, export):
    pytest.importorskip("tensorrt_rtx_bindings")
    rc, _, err = run_cli(
        "--checkpoint_dir",
        export,
        "--output_dir",
        tmp_path / "out",
        "--max_batch_size",
        "2",
        "--max_input_len",
        "16",
        "--max_output_len",
        "16",
        "--target",
        "sm89",
    )
    assert rc == 0, err


# GPT-2's export says position_embedding_type rope_gpt_neox (ModelOpt's fallback config, see the fixtures'
# README): ckptfmt.load_config corrects it from the position table in the rank file. Its hidden_act "gelu"
# (HF: gelu_new, the tanh form) is computed as exact GELU, well inside the fp16 tolerance below.
@pytest.mark.parametrize("export", EXPORTS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_modelopt_export_matches_transformers(export):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(export.parent / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([PROMPT])).logits[0, -1]
    ranks = TorchRanks(export, Limits(max_batch_size=1, max_input_len=16, max_output_len=16))
    _, logits = ranks.greedy(PROMPT, 1)
    err = float((logits[0][0].float() - ref).abs().max() / ref.abs().max())
    assert err <= 2e-2  # the exports are float16


# ModelOpt-quantized exports (FP8, INT8 SmoothQuant, INT4 AWQ) build: tests/build/test_quantized_build.py


@pytest.mark.trt
def test_gpt2_export_builds_learned_positions_and_says_so(tmp_path):
    """ModelOpt's GPT-2 config says rope_gpt_neox; the engine gets learned_absolute and the build warns why."""
    import json
    import subprocess
    import sys

    pytest.importorskip("tensorrt_rtx_bindings")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ckpt_build.cli", "--checkpoint_dir", FIXTURES / "gpt2" / "tp1_pp1"]
    cmd += ["--output_dir", out, "--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "16"]
    proc = subprocess.run([str(c) for c in [*cmd, "--target", "sm89"]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["pretrained_config"]["position_embedding_type"] == (
        "learned_absolute"
    )
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "'rope_gpt_neox' contradicts rank0.safetensors" in warnings[0], proc.stderr
