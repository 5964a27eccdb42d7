"""Weight-only quantization (symmetric int8/int4, per channel or per group) in numpy.

Layout (see ``names.linear_tensors``): a Linear weight ``W[out, in]`` becomes ``qweight[in, out]`` int8
(int4: packed two per byte along ``out``, element 2j in the low nibble) and ``scale[out]``
(per group: ``scale[in / group_size, out]``), with ``W ≈ qweight.T * scale``.
"""

from __future__ import annotations

import numpy as np

QMAX = {"int8": 127, "int4": 7}


def quantize_weight_only(w, precision: str, group_size: int | None = None):
    """Quantize ``w[out, in]``; returns ``(qweight, scale)`` with scale as float32."""
    wt = np.asarray(w, dtype=np.float32).T  # [in, out]
    qmax = QMAX[precision]
    if group_size:
        k, n = wt.shape
        if k % group_size:
            raise ValueError(f"input size {k} not divisible by group_size {group_size}")
        grouped = wt.reshape(k // group_size, group_size, n)
        scale = np.abs(grouped).max(axis=1) / qmax  # [k/g, n]
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        q = np.rint(grouped / scale[:, None, :]).reshape(k, n)
    else:
        scale = np.abs(wt).max(axis=0) / qmax  # [n]
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        q = np.rint(wt / scale)
    q = np.clip(q, -qmax - 1, qmax).astype(np.int8)
    return (pack_int4(q) if precision == "int4" else q), scale


def dequantize_weight_only(qweight, scale, precision: str, group_size: int | None = None):
    """Inverse of ``quantize_weight_only``: float32 ``W[out, in]``."""
    q = unpack_int4(np.asarray(qweight)) if precision == "int4" else np.asarray(qweight)
    q = q.astype(np.float32)
    s = np.asarray(scale, dtype=np.float32)
    if group_size:
        k, n = q.shape
        q = (q.reshape(k // group_size, group_size, n) * s[:, None, :]).reshape(k, n)
    else:
        q = q * s
    return q.T


def pack_int4(q):
    """int8 values in [-8, 7], shape [..., 2m] -> int8 [..., m] (element 2j low nibble, 2j+1 high)."""
    q = np.asarray(q, dtype=np.int8)
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dim, got {q.shape[-1]}")
    lo = q[..., 0::2].astype(np.uint8) & 0x0F
    hi = (q[..., 1::2].astype(np.uint8) & 0x0F) << 4
    return (lo | hi).view(np.int8)


def unpack_int4(p):
    """Inverse of ``pack_int4``."""
    u = np.asarray(p).view(np.uint8)
    lo = (u & 0x0F).astype(np.int8)
    hi = (u >> 4).astype(np.int8)
    lo = np.where(lo > 7, lo - 16, lo).astype(np.int8)
    hi = np.where(hi > 7, hi - 16, hi).astype(np.int8)
    out = np.empty((*u.shape[:-1], u.shape[-1] * 2), dtype=np.int8)
    out[..., 0::2], out[..., 1::2] = lo, hi
    return out


def dequantize_linear(weight, weights_scaling_factor, scheme: str, group_size: int | None = None):
    """float32 ``W[out, in]`` of a linear in ModelOpt's layout (``names.linear_tensors``, ``QuantConfig.scheme``):
    ``fp8`` / ``int8_sq`` ``weight[out, in]`` times its per-tensor ``[1]`` or per-row ``[out]`` scale; ``int4_awq``
    ``weight[out/2, in]`` (rows 2j, 2j+1 in the low, high nibble of a byte) times ``scale[out, in/group]``.
    The result is what multiplies ``x * prequant_scaling_factor`` (the smoothing is folded in)."""
    s = np.asarray(weights_scaling_factor, dtype=np.float32)
    if scheme == "int4_awq":
        q = unpack_int4(np.asarray(weight).T).T.astype(np.float32)
        return q * np.repeat(s, group_size or q.shape[1] // s.shape[1], axis=1)
    if scheme not in ("fp8", "int8_sq"):
        raise ValueError(f"scheme {scheme!r}: not one of fp8, int8_sq, int4_awq")
    q = np.asarray(weight).astype(np.float32)
    return q * (s[:, None] if s.size > 1 else s.reshape(()))
