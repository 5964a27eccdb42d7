"""Quantized HF exports (ModelOpt FP8 / INT8 SmoothQuant / INT4 AWQ, transformers' quantizers) are refused in one line
that says what they are and what is supported, instead of "tensor ... is not used" or a float cast of int8 bytes.

The exports are laid out as ModelOpt's ``export_hf_checkpoint`` writes them (quantized ``weight`` + ``weight_scale``
/ ``input_scale`` / ``pre_quant_scale`` per linear, ``hf_quant_config.json``, ``quantization_config`` in config.json),
made here from a tiny transformers model with numpy; ModelOpt itself is not installed in this venv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.convert.conftest import run_cli

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")
LINEARS += ("mlp.up_proj", "mlp.down_proj")


def _fp8(w: np.ndarray) -> dict[str, np.ndarray]:
    scale = np.float32(np.abs(w).max() / 448)
    return {"weight": (w / scale).astype(ml_dtypes.float8_e4m3fn), "weight_scale": scale, "input_scale": scale}


def _int8_sq(w: np.ndarray) -> dict[str, np.ndarray]:
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    q = np.round(w / scale[:, None]).astype(np.int8)
    return {"weight": q, "weight_scale": scale, "input_scale": np.float32(0.01)}


def _int4_awq(w: np.ndarray, group: int = 32) -> dict[str, np.ndarray]:
    out, inp = w.shape
    scale = (np.abs(w.reshape(out, inp // group, group)).max(axis=2) / 7).astype(np.float32)
    q = np.clip(np.round(w / np.repeat(scale, group, axis=1)), -8, 7).astype(np.int8) & 0x0F
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    return {"weight": packed, "weight_scale": scale, "pre_quant_scale": np.ones(inp, np.float32)}


QUANTIZERS = {"FP8": _fp8, "W8A8_SQ_PER_CHANNEL": _int8_sq, "W4A16_AWQ": _int4_awq}
DESCRIBED = {"FP8": "FP8 weights and activations", "W8A8_SQ_PER_CHANNEL": "INT8 SmoothQuant", "W4A16_AWQ": "INT4 AWQ"}


def quantized_export(src: Path, dst: Path, algo: str) -> Path:
    """``src`` (a tiny HF LLaMA) re-saved as a ModelOpt unified HF export quantized with ``algo``."""
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    for name in [n for n in tensors if n.endswith(".weight") and any(f".{lin}." in n for lin in LINEARS)]:
        base = name.removesuffix(".weight")
        for suffix, value in QUANTIZERS[algo](tensors.pop(name)).items():
            tensors[f"{base}.{suffix}"] = np.asarray(value)
    save_file(tensors, dst / "model.safetensors")
    quant = {"quant_algo": algo, "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"]}
    if algo == "W4A16_AWQ":
        quant.update(group_size=32, has_zero_point=False, pre_quant_scale=True)
    producer = {"name": "modelopt", "version": "0.47.0"}
    (dst / "hf_quant_config.json").write_text(json.dumps({"producer": producer, "quantization": quant}, indent=4))
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {
        "ignore": ["lm_head"],
        "quant_algo": algo,
        "producer": producer,
        "quant_library": "modelopt",
    }
    (dst / "config.json").write_text(json.dumps(config, indent=4))
    return dst


def convert_fails(model: Path, tmp_path: Path, capsys) -> str:
    out = tmp_path / "out"
    rc, _, err = run_cli("hf", "--model_dir", model, "--output_dir", out, "--quiet", capsys=capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    return err


@pytest.mark.parametrize("algo", list(QUANTIZERS))
def test_modelopt_export_is_named(algo, tiny_hf, tmp_path, capsys):
    model = quantized_export(tiny_hf("llama-gqa"), tmp_path / "m", algo)
    err = convert_fails(model, tmp_path, capsys)
    assert f"hf_quant_config.json: a quantized export (ModelOpt, quant_algo {algo}: {DESCRIBED[algo]})" in err
    assert "not supported yet" in err and "--use_weight_only" in err and "int4" in err


def test_quantization_config_alone_is_enough(tiny_hf, tmp_path, capsys):
    model = quantized_export(tiny_hf("llama-gqa"), tmp_path / "m", "FP8")
    (model / "hf_quant_config.json").unlink()
    err = convert_fails(model, tmp_path, capsys)
    assert "config.json: a quantized export (ModelOpt, quant_algo FP8: FP8 weights and activations)" in err


def test_scale_tensors_alone_are_enough(tiny_hf, tmp_path, capsys):
    model = quantized_export(tiny_hf("llama-gqa"), tmp_path / "m", "W8A8_SQ_PER_CHANNEL")
    (model / "hf_quant_config.json").unlink()
    config = json.loads((model / "config.json").read_text())
    del config["quantization_config"]
    (model / "config.json").write_text(json.dumps(config))
    err = convert_fails(model, tmp_path, capsys)
    assert "is a quantization scale: a quantized export" in err and "_scale" in err and "--use_weight_only" in err


def test_transformers_quantizer_is_named(tiny_hf, tmp_path, capsys):
    model = shutil.copytree(tiny_hf("llama-gqa"), tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (model / "config.json").write_text(json.dumps(config))
    assert "a quantized export (quantization_config: quant_method 'gptq', GPTQ)" in convert_fails(
        model, tmp_path, capsys
    )


def test_kv_cache_only_quantization_is_named(tiny_hf, tmp_path, capsys):
    model = shutil.copytree(tiny_hf("llama-gqa"), tmp_path / "m")
    quant = {"quant_algo": None, "kv_cache_quant_algo": "FP8"}
    (model / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    assert "a quantized export (ModelOpt, KV cache FP8)" in convert_fails(model, tmp_path, capsys)


def test_unquantized_modelopt_config_converts(tiny_hf, tmp_path, capsys):
    model = shutil.copytree(tiny_hf("llama-gqa"), tmp_path / "m")
    quant = {"quant_algo": None, "kv_cache_quant_algo": None}
    (model / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    rc, _, err = run_cli("hf", "--model_dir", model, "--output_dir", tmp_path / "out", "--quiet", capsys=capsys)
    assert rc == 0, err
