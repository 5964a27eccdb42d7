"""One short label per tested system saying how its model is quantized, for tables and reports.

Ours: from the checkpoint's (or engine's) ``quantization`` section as ckptfmt parsed it (``QuantConfig``), e.g.
``none``, ``fp8``, ``int8_sq per-channel/per-tensor``, ``int4_awq g64 + kv fp8``, ``int4 weight-only g128``.
Transformers: the ``quant_method`` of the model's ``quantization_config`` (``none`` without one) and the dtype it
runs in, e.g. ``none (transformers, float32)``.
"""

from __future__ import annotations

from typing import Any

from ckptfmt.config import QuantConfig

NONE = "none"


def checkpoint_label(quant: QuantConfig) -> str:
    """The weights' mode (with its granularity), then ``+ kv int8|fp8`` for a quantized KV cache."""
    label = _weights_label(quant)
    if quant.kv_cache:
        label = f"kv {quant.kv_cache}" if label == NONE else f"{label} + kv {quant.kv_cache}"
    return label


def _weights_label(quant: QuantConfig) -> str:
    scheme = quant.scheme
    if scheme == "fp8":
        return "fp8"
    if scheme == "int8_sq":
        weights = "per-channel" if quant.per_channel else "per-tensor"
        return f"int8_sq {weights}/{'per-token' if quant.per_token else 'per-tensor'}"
    if scheme == "int4_awq":
        return f"int4_awq g{quant.group_size}"
    if scheme == "weight_only":
        algo = quant.quant_algo or ""
        name = f"{quant.weight_only}_gptq" if algo.endswith("_GPTQ") else f"{quant.weight_only} weight-only"
        label = f"{name} {f'g{quant.group_size}' if quant.per_group else 'per-channel'}"
        return label + (" zero-point" if quant.extra.get("has_zero_point") else "")
    return NONE


def hf_label(config: dict[str, Any], dtype: str) -> str:
    """What transformers runs: the ``quantization_config``'s ``quant_method`` (or ``none``) and the dtype."""
    section = config.get("quantization_config")
    method = section.get("quant_method") if isinstance(section, dict) else None
    return f"{method if isinstance(method, str) and method else NONE} (transformers, {dtype})"
