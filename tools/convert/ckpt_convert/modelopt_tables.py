"""Mapping tables for NVIDIA ModelOpt's quantized HF exports, derived from each architecture's unquantized table.

A layer linear whose unquantized rule reads ``P.weight`` (q/k/v: three of them) reads, in the HF export, ``P.weight``
(quantized), ``P.weight_scale``, ``P.input_scale`` (FP8, INT8 SQ) and ``P.pre_quant_scale`` (INT8 SQ; INT4 AWQ where
not folded into the preceding norm) and makes the TensorRT-LLM form's ``weight``, ``weights_scaling_factor``,
``activation_scaling_factor`` and ``prequant_scaling_factor`` (names and shapes: ``ckptfmt.names.linear_tensors``).
KV-cache scales come from ``k_proj.k_scale`` / ``v_proj.v_scale``. Everything else keeps its unquantized rule.
"""

from __future__ import annotations

import functools

import numpy as np

from ckptfmt import CheckpointError, ModelSpec
from ckptfmt.names import (
    ACTIVATION_SCALE,
    COLUMN_LINEARS,
    KV_CACHE_SCALE,
    LAYER,
    PREQUANT_SCALE,
    QKV,
    ROW_LINEARS,
    WEIGHTS_SCALE,
)

from . import transforms
from .rules import Rule, Table

FP8_MAX = 448.0  # largest float8_e4m3fn
# scheme -> names of the dtypes its quantized HF weights may have (names: no ml_dtypes import at start-up)
WEIGHT_DTYPES = {
    "fp8": ("float8_e4m3fn",),
    "int8_sq": ("int8",),
    "int4_awq": ("uint8", "int8"),
}


class BadSource(ValueError):
    """A source tensor that cannot be imported; ``index`` is its position in the rule's sources."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


def _check_dtype(arrays: list[np.ndarray], scheme: str) -> None:
    for i, a in enumerate(arrays):
        if a.dtype.name not in WEIGHT_DTYPES[scheme]:
            want = " or ".join(WEIGHT_DTYPES[scheme])
            raise BadSource(i, f"dtype {a.dtype}, a {scheme} export stores {want}")


def fused_weight(arrays: list[np.ndarray], spec: ModelSpec, scheme: str, parts: int) -> np.ndarray:
    """q/k/v (or one) quantized weights fused on rows. FP8 parts with different per-tensor scales are requantized
    to the largest one, as ModelOpt's TensorRT-LLM export does (each value moves by at most one e4m3 step)."""
    weights, scales = arrays[:parts], arrays[parts:]
    _check_dtype(weights, scheme)
    if scheme == "int4_awq":  # two values a byte along the output rows: fused by whole packed rows
        return np.concatenate(weights, axis=0).view(np.int8)
    if scheme == "fp8" and parts > 1 and len({float(s) for s in scales}) > 1:
        top = max(float(s) for s in scales)
        weights = [
            np.clip(w.astype(np.float32) * (np.float32(s) / np.float32(top)), -FP8_MAX, FP8_MAX).astype(w.dtype)
            for w, s in zip(weights, scales, strict=True)
        ]
    return np.concatenate(weights, axis=0)


def fused_weight_scale(arrays: list[np.ndarray], spec: ModelSpec, scheme: str) -> np.ndarray:
    """FP8: the largest per-tensor scale ``[1]``; INT8 SQ ``[out]`` and INT4 AWQ ``[out, in/group]`` on rows."""
    if scheme == "fp8":
        return np.asarray([max(float(s) for s in arrays)], np.float32)
    return np.concatenate([a.astype(np.float32) for a in arrays], axis=0)


def largest_scalar(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Per-tensor scales of fused parts (activations, KV cache) -> their maximum ``[1]``."""
    for i, a in enumerate(arrays):
        if a.size != 1:
            raise BadSource(i, f"shape {list(a.shape)}, a per-tensor scale has one value")
    return np.asarray([max(float(a.reshape(())) for a in arrays)], np.float32)


def fp8_kv_scale(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """FP8 KV-cache scale: the largest of k/v amax / 448, at least 1.0 (ModelOpt's TensorRT-LLM export clamps)."""
    return np.maximum(largest_scalar(arrays, spec), np.float32(1.0))


def shared_prequant(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """The pre-quant (smoothing) scale ``[in]`` that fused parts share; a 2-D source is the quantized weight of an
    AWQ linear whose scale ModelOpt folded into the norm before it: ones."""
    if arrays[0].ndim == 2:
        return np.ones(arrays[0].shape[1], np.float32)
    for i, a in enumerate(arrays[1:], 1):
        if a.shape != arrays[0].shape or not np.array_equal(a, arrays[0]):
            raise BadSource(i, "differs from the first part's pre_quant_scale, so the parts cannot be fused")
    return arrays[0]


def linear_rules(rule: Rule, module: str, scheme: str) -> list[Rule]:
    """The quantized rules replacing the unquantized ``rule`` of linear ``module``'s weight."""
    stems = [s.removesuffix(".weight") for s in rule.sources]
    target = LAYER + module
    weights = tuple(s + ".weight" for s in stems)
    scales = tuple(s + ".weight_scale" for s in stems)
    rules = [
        Rule(target + ".weight", weights + scales, functools.partial(fused_weight, scheme=scheme, parts=len(stems))),
        Rule(f"{target}.{WEIGHTS_SCALE}", scales, functools.partial(fused_weight_scale, scheme=scheme)),
    ]
    if scheme in ("fp8", "int8_sq"):
        rules.append(Rule(f"{target}.{ACTIVATION_SCALE}", tuple(s + ".input_scale" for s in stems), largest_scalar))
    if scheme in ("int8_sq", "int4_awq"):
        prequant = tuple(s + ".pre_quant_scale" for s in stems)
        rules.append(
            Rule(f"{target}.{PREQUANT_SCALE}", prequant, shared_prequant, weights[:1] if scheme == "int4_awq" else ())
        )
    return rules


def kv_cache_rules(qkv: Rule, kv: str) -> list[Rule]:
    """``k_cache_scaling_factor`` / ``v_cache_scaling_factor`` and their maximum from ``k_scale`` / ``v_scale``."""
    _, k, v = (s.removesuffix(".weight") for s in qkv.sources)
    transform = fp8_kv_scale if kv == "fp8" else largest_scalar
    attention = LAYER + QKV.rsplit(".", 1)[0]
    return [
        Rule(f"{attention}.k_cache_scaling_factor", k + ".k_scale", transform),
        Rule(f"{attention}.v_cache_scaling_factor", v + ".v_scale", transform),
        Rule(f"{attention}.{KV_CACHE_SCALE}", (k + ".k_scale", v + ".v_scale"), transform),
    ]


def quantized_table(table: Table, scheme: str | None, kv: str | None) -> Table:
    """``table`` with each layer linear's weight rule replaced by ``linear_rules`` (and KV-cache rules added)."""
    rules: list[Rule] = []
    for rule in table.rules:
        module = rule.target.removeprefix(LAYER).removesuffix(".weight")
        if not rule.target.startswith(LAYER) or module not in (*COLUMN_LINEARS, *ROW_LINEARS):
            rules.append(rule)
            continue
        if scheme and rule.transform not in (transforms.identity, transforms.concat_rows):
            # e.g. GPT-2's Conv1D weights, transposed when unquantized: how ModelOpt lays them out quantized is
            # not pinned by a fixture, so they are refused rather than guessed
            raise CheckpointError(
                f"quantized weights of {rule.sources[0]} ({getattr(rule.transform, '__name__', 'transformed')} when "
                "unquantized) are not imported for this architecture (imported: LLaMA family, OPT)"
            )
        rules += linear_rules(rule, module, scheme) if scheme else [rule]
        if kv and module == QKV:
            rules += kv_cache_rules(rule, kv)
    return Table(tuple(rules), table.ignore, table.optional_prefixes)
