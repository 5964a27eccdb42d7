"""Quantized exports recognised: NVIDIA ModelOpt's are imported (``modelopt_import``), the others refused by name.

ModelOpt FP8 / INT8 SmoothQuant / INT4 AWQ exports (and their KV-cache scales) are imported; other ModelOpt algorithms
and transformers' quantizers (GPTQ, AWQ, bitsandbytes, ...) are refused in one line saying what they are. Without this
check such an export fails later as "tensor ...weight_scale is not used" or converts its int8 bytes as if floats.
"""

from __future__ import annotations

import json
from pathlib import Path

from ckptfmt import CheckpointError

HF_QUANT_CONFIG = "hf_quant_config.json"  # ModelOpt's export_hf_checkpoint writes it beside config.json

# ModelOpt / TensorRT-LLM quant_algo -> what it is
QUANT_ALGOS: dict[str, str] = {
    "FP8": "FP8 weights and activations",
    "FP8_PER_CHANNEL_PER_TOKEN": "FP8, per-channel weights and per-token activations",
    "FP8_BLOCK_SCALES": "FP8 with block scales",
    "FP8_PB_WO": "FP8 weight-only with block scales",
    "W8A8_SQ_PER_CHANNEL": "INT8 SmoothQuant",
    "W8A8_SQ_PER_TENSOR_PLUGIN": "INT8 SmoothQuant",
    "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN": "INT8 SmoothQuant",
    "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN": "INT8 SmoothQuant",
    "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN": "INT8 SmoothQuant",
    "W4A16_AWQ": "INT4 AWQ",
    "W4A8_AWQ": "INT4 AWQ with FP8 activations",
    "W4A16_GPTQ": "INT4 GPTQ",
    "W8A16_GPTQ": "INT8 GPTQ",
    "W8A16": "INT8 weight-only",
    "W4A16": "INT4 weight-only",
    "NVFP4": "NVFP4",
    "NVFP4_AWQ": "NVFP4 AWQ",
    "W4A8_NVFP4_FP8": "NVFP4 weights with FP8 activations",
    "MIXED_PRECISION": "mixed precision (per-layer algorithms)",
}
# transformers quantization_config quant_method -> what it is (ModelOpt's own is described by its quant_algo)
QUANT_METHODS: dict[str, str] = {
    "gptq": "GPTQ",
    "awq": "AWQ",
    "bitsandbytes": "bitsandbytes",
    "fp8": "FP8",
    "fbgemm_fp8": "FBGEMM FP8",
    "compressed-tensors": "compressed-tensors",
    "torchao": "torchao",
    "hqq": "HQQ",
    "eetq": "EETQ",
    "quanto": "quanto",
    "aqlm": "AQLM",
    "higgs": "HIGGS",
    "vptq": "VPTQ",
    "bitnet": "BitNet",
}
# endings of tensor names that only quantized exports hold (scales, zero points, packed weights)
QUANT_TENSOR_SUFFIXES = (
    "weight_scale",
    "weight_scale_2",
    "weight_scale_inv",
    "input_scale",
    "pre_quant_scale",
    "output_scale",
    "k_scale",
    "v_scale",
    ".qweight",
    ".qzeros",
    ".g_idx",
    ".SCB",
)
SUPPORTED = (
    "only NVIDIA ModelOpt FP8, INT8 SmoothQuant and INT4 AWQ exports are imported: convert the unquantized model "
    "(quantized here with --qformat fp8|int8_sq|int4_awq, or weight-only with --use_weight_only "
    "--weight_only_precision int8|int4)"
)


def describe_quantization(model_dir: Path, config: dict) -> tuple[Path, str] | None:
    """(file that says so, what it is) for a quantized HF export, from hf_quant_config.json or config.json."""
    path = model_dir / HF_QUANT_CONFIG
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return path, "a quantized export (unreadable quantization config)"
        quant = data.get("quantization", {}) if isinstance(data, dict) else {}
        producer = (data.get("producer") or {}).get("name", "ModelOpt") if isinstance(data, dict) else "ModelOpt"
        what = _algorithms(quant.get("quant_algo"), quant.get("kv_cache_quant_algo"))
        return (path, f"a quantized export ({_producer(producer)}, {what})") if what else None
    quant = config.get("quantization_config")
    if not isinstance(quant, dict) or not quant:
        return None
    path = model_dir / "config.json"
    method = str(quant.get("quant_method") or quant.get("quant_library") or "")
    if method.lower() == "modelopt" or quant.get("quant_library") == "modelopt":
        what = _algorithms(quant.get("quant_algo"), quant.get("kv_cache_scheme") or quant.get("kv_cache_quant_algo"))
        return path, f"a quantized export (ModelOpt, {what or 'quantization_config'})"
    name = QUANT_METHODS.get(method.lower(), method or "unknown method")
    return path, f"a quantized export (quantization_config: quant_method {method!r}, {name})"


def _producer(name: str) -> str:
    return "ModelOpt" if str(name).lower() == "modelopt" else str(name)


def _algorithms(algo, kv_algo) -> str:
    parts = []
    if algo:
        parts.append(f"quant_algo {algo}: {QUANT_ALGOS.get(str(algo).upper(), 'unknown algorithm')}")
    if kv_algo:
        parts.append(f"KV cache {kv_algo}")
    return ", ".join(parts)


def check_not_quantized(model_dir: Path, config: dict) -> None:
    """Refuse a quantized HF export in one line that says which one."""
    found = describe_quantization(model_dir, config)
    if found is not None:
        path, what = found
        raise CheckpointError(f"{path}: {what}; {SUPPORTED}")


def quantization_tensor(names: list[str]) -> str | None:
    """The first name that only a quantized export holds, or None."""
    return next((n for n in names if n.endswith(QUANT_TENSOR_SUFFIXES)), None)


def quantization_tensor_error(name: str, where: str) -> CheckpointError:
    return CheckpointError(f"{where}: tensor {name} is a quantization scale: a quantized export; {SUPPORTED}")
