"""Quantized HF exports that are not imported are refused in one line that says what they are and what is supported,
instead of "tensor ... is not used" or a float cast of int8 bytes; ModelOpt FP8 / INT8 SQ / INT4 AWQ exports import
(tests/convert/test_modelopt_quant_import.py) whichever of their two config files says so.

The exports are real ModelOpt 0.47 ``export_hf_checkpoint`` output (tests/fixtures/modelopt_quantized/), edited here
to declare what is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.convert.conftest import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "modelopt_quantized" / "llama_gqa"


def convert_fails(model: Path, tmp_path: Path, capsys) -> str:
    out = tmp_path / "out"
    rc, _, err = run_cli("hf", "--model_dir", model, "--output_dir", out, "--quiet", capsys=capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    return err


def export(tmp_path: Path, mode: str = "fp8") -> Path:
    return shutil.copytree(FIXTURES / mode / "hf", tmp_path / "m")


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "algo,what",
    [("NVFP4", "NVFP4"), ("W4A8_AWQ", "INT4 AWQ with FP8 activations"), ("FP8_PER_CHANNEL_PER_TOKEN", "FP8, per")],
)
def test_modelopt_algorithm_not_imported_is_named(algo, what, tmp_path, capsys):
    model = export(tmp_path)
    edit_json(model / "hf_quant_config.json", lambda d: d["quantization"].update(quant_algo=algo))
    err = convert_fails(model, tmp_path, capsys)
    assert f"hf_quant_config.json: field quant_algo '{algo}' ({what}" in err
    assert "is not imported (imported: FP8, W8A8_SQ_PER_CHANNEL, W4A16_AWQ)" in err


def test_quantization_config_alone_is_enough(tmp_path, capsys):
    """Without hf_quant_config.json, config.json's quantization_config (quant_method modelopt) says what it is."""
    model = export(tmp_path)
    (model / "hf_quant_config.json").unlink()
    rc, _, err = run_cli("hf", "--model_dir", model, "--output_dir", tmp_path / "out", "--quiet", capsys=capsys)
    assert rc == 0, err
    edit_json(model / "config.json", lambda d: d["quantization_config"].update(quant_algo="NVFP4_AWQ"))
    (tmp_path / "again").mkdir()
    err = convert_fails(model, tmp_path / "again", capsys)
    assert "config.json: field quant_algo 'NVFP4_AWQ' (NVFP4 AWQ) is not imported" in err


def test_scale_tensors_alone_are_enough(tmp_path, capsys):
    """No config file declares the quantization: the scale tensors still say it is a quantized export."""
    model = export(tmp_path, "int8_sq")
    (model / "hf_quant_config.json").unlink()
    edit_json(model / "config.json", lambda d: d.pop("quantization_config"))
    err = convert_fails(model, tmp_path, capsys)
    assert "is a quantization scale: a quantized export" in err and "_scale" in err and "--qformat" in err


def test_transformers_quantizer_is_named(tiny_hf, tmp_path, capsys):
    model = shutil.copytree(tiny_hf("llama-gqa"), tmp_path / "m")
    edit_json(model / "config.json", lambda d: d.update(quantization_config={"quant_method": "gptq", "bits": 4}))
    err = convert_fails(model, tmp_path, capsys)
    assert "a quantized export (quantization_config: quant_method 'gptq', GPTQ)" in err
    assert "only NVIDIA ModelOpt FP8, INT8 SmoothQuant and INT4 AWQ exports are imported" in err


def test_kv_cache_only_quantization_needs_its_scales(tiny_hf, tmp_path, capsys):
    """A KV-cache-only ModelOpt config on weights without k_scale/v_scale: the missing scale is named."""
    model = shutil.copytree(tiny_hf("llama-gqa"), tmp_path / "m")
    quant = {"quant_algo": None, "kv_cache_quant_algo": "FP8"}
    (model / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    err = convert_fails(model, tmp_path, capsys)
    assert "tensor model.layers.0.self_attn.k_proj.k_scale missing (needed for" in err


def test_unknown_kv_cache_algorithm(tmp_path, capsys):
    model = export(tmp_path)
    edit_json(model / "hf_quant_config.json", lambda d: d["quantization"].update(kv_cache_quant_algo="NVFP4"))
    assert "field kv_cache_quant_algo 'NVFP4' is not imported (imported: FP8, INT8)" in convert_fails(
        model, tmp_path, capsys
    )


def test_unquantized_modelopt_config_converts(tiny_hf, tmp_path, capsys):
    model = shutil.copytree(tiny_hf("llama-gqa"), tmp_path / "m")
    quant = {"quant_algo": None, "kv_cache_quant_algo": None}
    (model / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    rc, _, err = run_cli("hf", "--model_dir", model, "--output_dir", tmp_path / "out", "--quiet", capsys=capsys)
    assert rc == 0, err
