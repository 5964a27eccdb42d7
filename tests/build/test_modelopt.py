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
