"""Importing real NVIDIA ModelOpt 0.47 quantized exports (tests/fixtures/modelopt_quantized/, made by ModelOpt itself):
the HF form and the TensorRT-LLM form, at tp 1, tp 2 and pp 2, LLaMA (GQA) and OPT; and bad exports refused in one
line with nothing written. No ModelOpt needed here: the fixtures are ModelOpt's files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from ckptfmt import RankFileReader, check_checkpoint, load_config
from tests.convert.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "modelopt_quantized"
LLAMA_MODES = ("fp8", "fp8_kv_fp8", "int8_sq", "int4_awq", "int4_awq_kv_fp8")
OPT_MODES = ("fp8", "fp8_kv_fp8", "int8_sq", "int4_awq", "int4_awq_kv_fp8")
LAYOUTS = ((1, 1), (2, 1), (1, 2))
# HF linear -> (TensorRT-LLM module, part of its fused rows); LLaMA and OPT names
LINEARS = {
    "self_attn.q_proj": "attention.qkv",
    "self_attn.k_proj": "attention.qkv",
    "self_attn.v_proj": "attention.qkv",
    "self_attn.o_proj": "attention.dense",
    "self_attn.out_proj": "attention.dense",
    "mlp.gate_proj": "mlp.fc",
    "mlp.up_proj": "mlp.gate",
    "mlp.down_proj": "mlp.proj",
    "fc1": "mlp.fc",
    "fc2": "mlp.proj",
}


def convert(capsys, model: Path, out: Path, *flags) -> Path:
    rc, stdout, err = run_cli("hf", "--model_dir", model, "--output_dir", out, *flags, capsys=capsys)
    assert rc == 0, err
    assert "--quiet" in flags or stdout.strip().splitlines()[-1].startswith(f"{out}: ")
    return out


def fails(capsys, model: Path, tmp_path: Path, *flags) -> str:
    out = tmp_path / "out"
    rc, _, err = run_cli("hf", "--model_dir", model, "--output_dir", out, "--quiet", *flags, capsys=capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return err


def layout_flags(tp: int, pp: int) -> list[str]:
    return ["--tp_size", str(tp), "--pp_size", str(pp), "--use_parallel_embedding"]


def same_files(ours: Path, theirs: Path) -> None:
    """Same rank files; per file the same tensor names, and per tensor the same dtype, shape and bytes."""
    assert sorted(p.name for p in ours.glob("rank*.safetensors")) == sorted(p.name for p in theirs.glob("rank*"))
    for path in theirs.glob("rank*.safetensors"):
        a, b = RankFileReader(ours / path.name), RankFileReader(path)
        assert sorted(a.entries) == sorted(b.entries), path.name
        for name in b.entries:
            assert (a[name].dtype, a[name].shape) == (b[name].dtype, b[name].shape), name
            assert a[name].tobytes() == b[name].tobytes(), f"{path.name}: {name}"


def same_layout(ours: Path, theirs: Path) -> None:
    """Same rank files, tensor names, dtypes and shapes (values may differ: see the fixtures' README)."""
    for path in theirs.glob("rank*.safetensors"):
        a, b = RankFileReader(ours / path.name), RankFileReader(path)
        assert {n: a.spec(n) for n in a.entries} == {n: b.spec(n) for n in b.entries}, path.name


@pytest.mark.parametrize("tp,pp", LAYOUTS)
@pytest.mark.parametrize("mode", ("fp8_kv_fp8", "int8_sq", "int4_awq", "int4_awq_kv_fp8"))
def test_trtllm_form_reshards_as_modelopt_exports(mode, tp, pp, tmp_path, capsys):
    """ModelOpt's tp 1 export resharded here is byte for byte ModelOpt's own export at that layout."""
    out = convert(capsys, ROOT / "llama_gqa" / mode / "tp1_pp1", tmp_path / "out", *layout_flags(tp, pp), "--quiet")
    same_files(out, ROOT / "llama_gqa" / mode / f"tp{tp}_pp{pp}")
    config = check_checkpoint(out)
    assert (config.mapping.tp_size, config.mapping.pp_size) == (tp, pp)


def test_trtllm_form_int8_kv_cache_reshards(tmp_path, capsys):
    out = convert(capsys, ROOT / "llama_gqa" / "int8_sq_kv_int8" / "tp1_pp1", tmp_path / "o", "--tp_size", "2")
    quant = check_checkpoint(out).quantization
    assert (quant.quant_algo, quant.kv_cache_quant_algo) == ("W8A8_SQ_PER_CHANNEL", "INT8")
    assert RankFileReader(out / "rank1.safetensors")["transformer.layers.1.attention.kv_cache_scaling_factor"] > 0


def fp8_ulp(x: np.ndarray) -> np.ndarray:
    """Spacing of float8_e4m3fn around |x| (3 mantissa bits; subnormal spacing 2^-9)."""
    exponent = np.floor(np.log2(np.maximum(np.abs(x), 2.0**-6)))
    return 2.0 ** (exponent - 3)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """``[out/2, in]`` bytes -> ``[out, in]`` signed 4-bit values; row 2j is byte row j's low nibble."""
    raw = packed.view(np.uint8)
    low, high = (raw & 0x0F).astype(np.int32), (raw >> 4).astype(np.int32)
    out = np.empty((raw.shape[0] * 2, raw.shape[1]), np.int32)
    out[0::2], out[1::2] = np.where(low > 7, low - 16, low), np.where(high > 7, high - 16, high)
    return out


def dequantized(weight: np.ndarray, scale: np.ndarray, scheme: str) -> np.ndarray:
    if scheme == "int4_awq":
        return unpack_int4(weight) * np.repeat(scale.astype(np.float64), weight.shape[1] // scale.shape[1], axis=1)
    values = weight.astype(np.float64)
    scale = scale.astype(np.float64).reshape(-1)
    return values * (scale[:, None] if scale.size > 1 else scale[0])


def hf_tensors(mode_dir: Path) -> dict[str, np.ndarray]:
    reader = RankFileReader(mode_dir / "hf" / "model.safetensors")
    return {n: reader[n] for n in reader.entries}


SCHEMES = {"fp8": "fp8", "int8_sq": "int8_sq", "int4_awq": "int4_awq"}


@pytest.mark.parametrize(
    "model,mode", [("llama_gqa", m) for m in LLAMA_MODES] + [("opt", m) for m in OPT_MODES if m != "fp8_kv_fp8"]
)
def test_hf_form_dequantizes_to_modelopt_weights(model, mode, tmp_path, capsys):
    """Every imported linear dequantizes to the HF export's values: exactly for the integer modes (same codes, same
    scales), within one e4m3 step for FP8 (q/k/v requantized to their largest scale)."""
    scheme = SCHEMES[mode.split("_kv")[0]]
    out = convert(capsys, ROOT / model / mode / "hf", tmp_path / "out", "--dtype", "float16", "--quiet")
    ours = RankFileReader(out / "rank0.safetensors")
    hf = hf_tensors(ROOT / model / mode)
    for layer in range(2):
        parts: dict[str, list[str]] = {}
        for stem, module in LINEARS.items():
            prefix = "model.layers" if model == "llama_gqa" else "model.decoder.layers"
            name = f"{prefix}.{layer}.{stem}"
            if f"{name}.weight" in hf:
                parts.setdefault(module, []).append(name)
        assert len(parts) == (5 if model == "llama_gqa" else 4)
        for module, names in parts.items():
            base = f"transformer.layers.{layer}.{module}"
            got = dequantized(ours[f"{base}.weight"], ours[f"{base}.weights_scaling_factor"], scheme)
            want = np.concatenate([dequantized(hf[f"{n}.weight"], hf[f"{n}.weight_scale"], scheme) for n in names])
            if scheme != "fp8":
                assert np.array_equal(got, want), base
                continue
            top = float(ours[f"{base}.weights_scaling_factor"][0])
            assert np.all(np.abs(got - want) / top <= fp8_ulp(want / top)), base
    check_checkpoint(out)


@pytest.mark.parametrize("tp,pp", LAYOUTS)
@pytest.mark.parametrize("mode", LLAMA_MODES)
def test_hf_form_has_modelopt_trtllm_layout(mode, tp, pp, tmp_path, capsys):
    """The HF form imported at a layout has the names, dtypes and shapes of ModelOpt's TensorRT-LLM export there."""
    out = convert(capsys, ROOT / "llama_gqa" / mode / "hf", tmp_path / "o", "--dtype", "float16", *layout_flags(tp, pp))
    same_layout(out, ROOT / "llama_gqa" / mode / f"tp{tp}_pp{pp}")
    ours, theirs = load_config(out).quantization, load_config(ROOT / "llama_gqa" / mode / "tp1_pp1").quantization
    assert ours.to_dict() == theirs.to_dict()


def test_fp8_kv_cache_scales_as_the_trtllm_export(tmp_path, capsys):
    """KV scales from k_scale/v_scale, clamped to at least 1 as ModelOpt's TensorRT-LLM export does."""
    out = convert(capsys, ROOT / "llama_gqa" / "fp8_kv_fp8" / "hf", tmp_path / "o", "--dtype", "float16")
    ours = RankFileReader(out / "rank0.safetensors")
    theirs = RankFileReader(ROOT / "llama_gqa" / "fp8_kv_fp8" / "tp1_pp1" / "rank0.safetensors")
    for name in [n for n in theirs.entries if "cache_scaling_factor" in n]:
        assert ours[name].tobytes() == theirs[name].tobytes(), name


def test_tokenizer_and_summary(tmp_path, capsys):
    model = shutil.copytree(ROOT / "opt" / "int8_sq" / "hf", tmp_path / "m")
    (model / "tokenizer.json").write_text("{}")
    out = convert(capsys, model, tmp_path / "o", "--pp_size", "2")
    assert (out / "tokenizer" / "tokenizer.json").read_text() == "{}"


# ---- bad exports: one line, nothing written ----


def broken(tmp_path: Path, mode: str = "int8_sq", model: str = "llama_gqa") -> tuple[Path, dict[str, np.ndarray]]:
    dst = shutil.copytree(ROOT / model / mode / "hf", tmp_path / "m")
    return dst, hf_tensors(ROOT / model / mode)


def save(model: Path, tensors: dict[str, np.ndarray]) -> None:
    from ckptfmt import RankFileWriter

    writer = RankFileWriter(model / "model.safetensors", {n: (a.dtype, a.shape) for n, a in tensors.items()})
    for name, array in tensors.items():
        writer.write(name, array)
    writer.close()


def test_missing_scale(tmp_path, capsys):
    model, tensors = broken(tmp_path)
    del tensors["model.layers.1.self_attn.k_proj.weight_scale"]
    save(model, tensors)
    err = fails(capsys, model, tmp_path)
    assert "tensor model.layers.1.self_attn.k_proj.weight_scale missing" in err


def test_wrong_shape_scale(tmp_path, capsys):
    model, tensors = broken(tmp_path)
    tensors["model.layers.0.mlp.down_proj.weight_scale"] = tensors["model.layers.0.mlp.down_proj.weight_scale"][:-1]
    save(model, tensors)
    err = fails(capsys, model, tmp_path)
    assert "model.layers.0.mlp.down_proj.weight_scale [63]" in err and "needs [64]" in err


@pytest.mark.parametrize("value", [np.nan, 0.0, -1.0, np.inf])
def test_bad_scale_values(value, tmp_path, capsys):
    model, tensors = broken(tmp_path, "fp8")
    tensors["model.layers.1.mlp.up_proj.input_scale"] = np.asarray(value, np.float32)
    save(model, tensors)
    err = fails(capsys, model, tmp_path)
    assert "tensor model.layers.1.mlp.up_proj.input_scale: scale values must be finite and > 0" in err


def test_unknown_quant_algo(tmp_path, capsys):
    model, _ = broken(tmp_path)
    path = model / "hf_quant_config.json"
    data = json.loads(path.read_text())
    data["quantization"]["quant_algo"] = "W4A8_AWQ"
    path.write_text(json.dumps(data))
    err = fails(capsys, model, tmp_path)
    assert "hf_quant_config.json: field quant_algo 'W4A8_AWQ' (INT4 AWQ with FP8 activations) is not imported" in err
    data["quantization"]["quant_algo"] = "W9A9"
    path.write_text(json.dumps(data))
    assert "field quant_algo 'W9A9' (unknown algorithm) is not imported" in fails(capsys, model, tmp_path)


def test_awq_group_size_not_dividing(tmp_path, capsys):
    """Group 32 at tp 4: o_proj's per-rank input (16) is not a multiple; refused before anything is written."""
    err = fails(capsys, ROOT / "llama_gqa" / "int4_awq" / "hf", tmp_path, "--tp_size", "4")
    assert "group_size: 32 does not divide the per-rank input size 16" in err


def test_awq_group_size_field_disagreeing_with_scales(tmp_path, capsys):
    model, _ = broken(tmp_path, "int4_awq")
    path = model / "hf_quant_config.json"
    data = json.loads(path.read_text())
    data["quantization"]["group_size"] = 16
    path.write_text(json.dumps(data))
    assert "does not match config.json" in fails(capsys, model, tmp_path)


def test_wrong_weight_dtype(tmp_path, capsys):
    model, tensors = broken(tmp_path, "fp8")
    tensors["model.layers.0.self_attn.o_proj.weight"] = tensors["model.layers.0.self_attn.o_proj.weight"].view(np.int8)
    save(model, tensors)
    err = fails(capsys, model, tmp_path)
    assert "tensor model.layers.0.self_attn.o_proj.weight: dtype int8, a fp8 export stores float8_e4m3fn" in err


def test_undeclared_kv_scale(tmp_path, capsys):
    """k_scale/v_scale of an export whose config declares no KV-cache quantization: not silently dropped."""
    model, tensors = broken(tmp_path, "fp8")
    tensors["model.layers.0.self_attn.k_proj.k_scale"] = np.asarray(0.5, np.float32)
    save(model, tensors)
    assert "tensor model.layers.0.self_attn.k_proj.k_scale is not used" in fails(capsys, model, tmp_path)


def test_trtllm_form_other_dtype_refused(tmp_path, capsys):
    err = fails(capsys, ROOT / "llama_gqa" / "fp8" / "tp1_pp1", tmp_path, "--dtype", "bfloat16")
    assert "is a TensorRT-LLM checkpoint in float16; it is resharded, not cast" in err


def test_weight_only_flags_refused(tmp_path, capsys):
    err = fails(capsys, ROOT / "opt" / "fp8" / "hf", tmp_path, "--use_weight_only")
    assert "--use_weight_only: does not apply to a quantized checkpoint" in err


def test_fp8_values_are_e4m3():
    """The fixtures' FP8 weights really are e4m3 (guards the dtype mapping the tests rely on)."""
    hf = hf_tensors(ROOT / "llama_gqa" / "fp8")
    assert hf["model.layers.0.mlp.down_proj.weight"].dtype == np.dtype(ml_dtypes.float8_e4m3fn)


def test_gpt2_hf_form_refused(tiny_hf, tmp_path, capsys):
    """GPT-2's Conv1D weights are transposed when unquantized; their quantized HF layout is not pinned by a fixture."""
    model = shutil.copytree(tiny_hf("gpt2"), tmp_path / "m")
    quant = {"quant_algo": "FP8", "kv_cache_quant_algo": None}
    (model / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    err = fails(capsys, model, tmp_path)
    assert "quantized weights of transformer.h.{i}.attn.c_attn.weight (transpose when unquantized)" in err
