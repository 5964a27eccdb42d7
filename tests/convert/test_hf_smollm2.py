"""The real SmolLM2-135M-Instruct (LLaMA, 9 heads / 3 KV heads, tied embeddings, bf16) converts exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckptfmt import load_config
from ckptfmt.validate import validate_checkpoint
from tests.convert.conftest import run_cli
from tests.convert.test_hf_roundtrip import check_exact
from tests.smollm2 import smollm2_hf_dir

pytestmark = pytest.mark.slow
CACHE = Path(os.environ.get("SMOLLM2_CACHE", Path(__file__).resolve().parents[2] / ".cache"))


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_hf_dir(CACHE)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2):
    from tests.convert.reference import reference_tensors

    return reference_tensors(smollm2)


@pytest.mark.parametrize("tp,pp", [(1, 1), (3, 1), (3, 2)])
def test_smollm2_converts_exactly(tp, pp, smollm2, smollm2_reference, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc, stdout, err = run_cli(
        "hf", "--model_dir", smollm2, "--output_dir", out, "--tp_size", tp, "--pp_size", pp, capsys=capsys
    )
    assert rc == 0, err
    assert "peak RSS" in stdout
    config = load_config(out)
    assert (config.architecture, config.dtype, config.kv_heads, config.get("rotary_base")) == (
        "LlamaForCausalLM",
        "bfloat16",
        3,
        100000.0,
    )
    check_exact(out, smollm2_reference, "bfloat16")


def test_smollm2_tp2_is_refused_clearly(smollm2, tmp_path, capsys):
    """9 attention heads cannot be split over 2 ranks: a one-line error, no output."""
    out = tmp_path / "ckpt"
    rc, _, err = run_cli("hf", "--model_dir", smollm2, "--output_dir", out, "--tp_size", 2, capsys=capsys)
    assert rc == 1 and "mapping.tp_size: must divide num_attention_heads (9)" in err and err.count("\n") == 1
    assert not out.exists()


def test_smollm2_weight_only_int4_validates(smollm2, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc, _, err = run_cli(
        "hf",
        "--model_dir",
        smollm2,
        "--output_dir",
        out,
        "--use_weight_only",
        "--weight_only_precision",
        "int4",
        "--per_group",
        "--group_size",
        "64",
        "--tp_size",
        "3",
        "--workers",
        "2",
        "--quiet",
        capsys=capsys,
    )
    assert rc == 0, err
    assert validate_checkpoint(out) == ([], [])
