"""ModelOpt FP8 / INT8 SmoothQuant / INT4 AWQ / INT8-FP8 KV-cache exports built as real TensorRT-RTX engines
(Q/DQ layers); the numerics of the same graph are checked against the torch backend in tests/test_executor_parity.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import plan_strings, run_cli

from ckptfmt.engine import check_engine_dir

QUANTIZED = Path(__file__).resolve().parents[1] / "fixtures" / "modelopt_quantized" / "llama_gqa"
LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "16"]


def build(src: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc, _, err = run_cli("--checkpoint_dir", src, "--output_dir", out, *LIMITS, *extra)
    return rc, err


@pytest.mark.trt
@pytest.mark.parametrize(
    "mode,target,algo,kv",
    [
        ("fp8", "sm89", "FP8", None),
        ("fp8_kv_fp8", "sm89,sm120", "FP8", "FP8"),
        ("int8_sq", "sm80,sm86", "W8A8_SQ_PER_CHANNEL", None),
        ("int8_sq_kv_int8", "sm86", "W8A8_SQ_PER_CHANNEL", "INT8"),
        ("int4_awq", "sm80", "W4A16_AWQ", None),
        ("int4_awq_kv_fp8", "sm89", "W4A16_AWQ", "FP8"),
    ],
)
def test_quantized_export_builds(tmp_path, mode, target, algo, kv):
    pytest.importorskip("tensorrt_rtx_bindings")
    out = tmp_path / "engine"
    rc, err = build(QUANTIZED / mode / "tp1_pp1", out, "--target", target)
    assert rc == 0, err
    engine = check_engine_dir(out, hash_files=True)
    quant = json.loads((out / "config.json").read_text())["pretrained_config"]["quantization"]
    assert quant.get("quant_algo") == algo and quant.get("kv_cache_quant_algo") == kv, quant
    assert engine.bound_to.compute_capabilities == target.split(",")
    words: set[str] = set()
    for line in plan_strings(out / "rank0.engine"):
        words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line))
    stage = engine.io.stage(0)
    missing = [t.name for t in stage.inputs + stage.outputs if t.name not in words]
    assert not missing, f"rank0.engine does not name {missing}"


def test_quantize_follows_tensorrt():
    """IQuantizeLayer: x / scale, int8 rounded half to even and saturated to [-128, 127]; fp8 e4m3fn saturated
    to +-448 (the torch backend clamps the same way: ckpt_eval.quantized.fake_quant)."""
    import torch

    from ckpt_build.lower_torch import TorchOps

    ops = TorchOps({})
    x = torch.tensor([0.5, 1.5, 2.5, -2.5, -0.5, 300.0, -300.0, 0.26])
    one = torch.ones((), dtype=torch.float32)
    assert ops.quantize(x, one, "int8").tolist() == [0, 2, 2, -2, 0, 127, -128, 0]
    fp8 = ops.quantize(x * 2, one, "fp8")
    assert fp8.dtype == torch.float8_e4m3fn
    assert fp8.float().tolist() == [1.0, 3.0, 5.0, -5.0, -1.0, 448.0, -448.0, 0.5]
    back = ops.dequantize(ops.quantize(x, torch.full((), 0.5), "int8"), torch.full((), 0.5), "float32")
    assert back.tolist() == [0.5, 1.5, 2.5, -2.5, -0.5, 63.5, -64.0, 0.5]


def test_fp8_below_sm89_is_refused_in_one_line(tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    rc, err = build(QUANTIZED / "fp8_kv_fp8" / "tp1_pp1", tmp_path / "out", "--target", "sm86")
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    assert "sm86 cannot run fp8 (needs sm89 or newer)" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def with_quantization(src: Path, out: Path, **overrides) -> Path:
    """A copy of the export ``src`` whose config's quantization section takes ``overrides``."""
    shutil.copytree(src, out)
    config = json.loads((out / "config.json").read_text())
    config["quantization"].update(overrides)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.trt
def test_per_token_smoothquant_builds(tmp_path):
    """Per-token SmoothQuant (the INT8 SQ export's tensors, each row's input scale computed at run time): its
    rounding is elementwise layers (network.per_token_fake_quant), so the plan builds and records the mode."""
    pytest.importorskip("tensorrt_rtx_bindings")
    algo = "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
    src = with_quantization(QUANTIZED / "int8_sq" / "tp1_pp1", tmp_path / "src", quant_algo=algo)
    out = tmp_path / "engine"
    rc, err = build(src, out, "--target", "sm86")
    assert rc == 0, err
    check_engine_dir(out, hash_files=True)
    assert json.loads((out / "config.json").read_text())["pretrained_config"]["quantization"]["quant_algo"] == algo


@pytest.mark.parametrize(
    "mode,overrides,word",
    [
        ("int8_sq", {"quant_algo": "NVFP4"}, "NVFP4"),
        ("int4_awq", {"has_zero_point": True}, "zero points"),
    ],
)
def test_unbuilt_modes_are_refused_in_one_line(tmp_path, mode, overrides, word):
    src = with_quantization(QUANTIZED / mode / "tp1_pp1", tmp_path / "src", **overrides)
    rc, err = build(src, tmp_path / "out")
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert word in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
