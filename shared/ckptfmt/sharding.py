"""Tensor-parallel split/merge rules: column, row, fused q/k/v (GQA-aware), padded vocab.

Every function works on numpy arrays (and on anything numpy-like with ``shape`` and slicing).
``shard(name, full, config, rank)`` applies the rule of a canonical tensor name;
``unshard(name, parts, config)`` inverts it exactly.
"""

from __future__ import annotations

import re

import numpy as np

from .config import CheckpointConfig
from .errors import CheckpointError
from .names import (
    ACTIVATION_SCALE,
    COLUMN_LINEARS,
    KV_CACHE_SCALES,
    LINEAR_SCALES,
    LM_HEAD,
    POSITION_EMBEDDING,
    PREQUANT_SCALE,
    QKV,
    ROW_LINEARS,
    VOCAB_EMBEDDING,
    WEIGHTS_SCALE,
    kv_heads_per_rank,
    model_spec,
    pad_to_multiple,
)


def split(a, tp_size: int, tp_rank: int, dim: int):
    """Equal split along ``dim`` (must divide)."""
    size = a.shape[dim]
    if size % tp_size:
        raise ValueError(f"dim {dim} of size {size} not divisible by tp_size {tp_size}")
    step = size // tp_size
    index = [slice(None)] * len(a.shape)
    index[dim] = slice(tp_rank * step, (tp_rank + 1) * step)
    return a[tuple(index)]


def pad_rows(a, rows: int):
    """Zero-pad dim 0 up to ``rows``."""
    if a.shape[0] == rows:
        return a
    pad = np.zeros((rows - a.shape[0], *a.shape[1:]), dtype=a.dtype)
    return np.concatenate([np.asarray(a), pad], axis=0)


def split_padded(a, tp_size: int, tp_rank: int):
    """Split dim 0 after zero-padding it to a multiple of ``tp_size`` (vocab rows)."""
    rows = pad_to_multiple(a.shape[0], tp_size)
    step = rows // tp_size
    lo, hi = tp_rank * step, (tp_rank + 1) * step
    part = a[lo : min(hi, a.shape[0])]
    return pad_rows(part, step)


def kv_head_of_rank(num_kv_heads: int, tp_size: int, tp_rank: int) -> range:
    """KV heads held by ``tp_rank`` (replicated when there are fewer KV heads than ranks)."""
    n = kv_heads_per_rank(num_kv_heads, tp_size)
    first = tp_rank * n if num_kv_heads >= tp_size else tp_rank * num_kv_heads // tp_size
    return range(first, first + n)


def split_qkv(q, k, v, num_heads: int, num_kv_heads: int, tp_size: int, tp_rank: int):
    """Fused per-rank qkv rows: this rank's q heads, then its k heads, then its v heads.

    ``q`` has ``num_heads * head_size`` rows, ``k``/``v`` ``num_kv_heads * head_size`` (weights or biases).
    """
    head = q.shape[0] // num_heads
    q_part = split(q, tp_size, tp_rank, 0)
    kv = kv_head_of_rank(num_kv_heads, tp_size, tp_rank)
    rows = slice(kv.start * head, kv.stop * head)
    return np.concatenate([np.asarray(q_part), np.asarray(k[rows]), np.asarray(v[rows])], axis=0)


def merge_qkv(parts: list, num_heads: int, num_kv_heads: int, head_size: int):
    """Inverse of ``split_qkv`` over all ranks: full (q, k, v)."""
    tp = len(parts)
    qn = num_heads // tp * head_size
    kvn = kv_heads_per_rank(num_kv_heads, tp) * head_size
    q = np.concatenate([p[:qn] for p in parts], axis=0)
    owners: dict[int, int] = {}  # first rank holding each kv head group
    for r in range(tp):
        owners.setdefault(kv_head_of_rank(num_kv_heads, tp, r).start, r)
    ranks = [owners[h] for h in sorted(owners)]
    k = np.concatenate([parts[r][qn : qn + kvn] for r in ranks], axis=0)
    v = np.concatenate([parts[r][qn + kvn : qn + 2 * kvn] for r in ranks], axis=0)
    return q, k, v


# ---- rules by canonical name ----------------------------------------------------------------------
_LAYER_RE = re.compile(
    r"^transformer\.layers\.\d+\.(.+)\.(weight|bias|per_channel_scale|" + "|".join(LINEAR_SCALES) + ")$"
)
_SCALES = (*LINEAR_SCALES, *KV_CACHE_SCALES)


def shard_rule(name: str, config: CheckpointConfig) -> tuple[str, int]:
    """(rule, dim) for a canonical tensor name: rule in replicate/split/split_padded/qkv (dim 0 for replicate)."""
    tp = config.mapping.tp_size
    if tp == 1:
        return "replicate", 0
    if name in (VOCAB_EMBEDDING, POSITION_EMBEDDING):
        if not config.use_parallel_embedding:
            return "replicate", 0
        return ("split_padded", 0) if config.embedding_sharding_dim == 0 else ("split", 1)
    if name in (LM_HEAD, "lm_head.bias"):
        return "split_padded", 0
    m = _LAYER_RE.match(name)
    if not m:
        return "replicate", 0
    module, kind = m.groups()
    column = module in COLUMN_LINEARS
    if not column and module not in ROW_LINEARS:
        return "replicate", 0
    if kind == "bias":
        return ("qkv" if module == QKV else "split", 0) if column else ("replicate", 0)
    quant = config.quantization
    if kind == "per_channel_scale":  # [out], or [in / group, out] per group
        out_dim = 1 if quant.per_group else 0
        if column:
            return ("qkv" if module == QKV else "split"), out_dim
        return ("split", 0) if quant.per_group else ("replicate", 0)
    # ModelOpt's rules (its postprocess.py tables): per-tensor scales replicated; the weight scales [out] (SQ per
    # channel) and [out, in/group] (AWQ) split with the output rows of column linears, AWQ's also with the input
    # columns of row linears (SQ's [out] replicated there); the pre-quant scales [in] split with row linears' input
    if kind == ACTIVATION_SCALE or (kind == WEIGHTS_SCALE and quant.scheme == "fp8"):
        return "replicate", 0
    if kind == WEIGHTS_SCALE:
        if quant.scheme == "int8_sq" and not quant.per_channel:
            return "replicate", 0
        if column:
            return ("qkv" if module == QKV else "split"), 0
        return ("split", 1) if quant.scheme == "int4_awq" else ("replicate", 0)
    if kind == PREQUANT_SCALE:
        return ("replicate", 0) if column else ("split", 0)
    out_dim = 1 if quant.scheme == "weight_only" else 0  # our weight-only weights are stored [in, out]
    if column:
        return ("qkv" if module == QKV else "split"), out_dim
    return "split", 1 - out_dim


def shard(name: str, full, config: CheckpointConfig, rank: int):
    """The part of canonical tensor ``name`` that rank ``rank`` holds (unquantized layout for qkv)."""
    rule, dim = shard_rule(name, config)
    tp_rank = config.mapping.tp_rank(rank)
    tp = config.mapping.tp_size
    if rule == "replicate":
        return full
    if rule == "split":
        return split(full, tp, tp_rank, dim)
    if rule == "split_padded":
        return split_padded(full, tp, tp_rank)
    spec = model_spec(config)
    moved = np.moveaxis(np.asarray(full), dim, 0)
    packing = (spec.q_size + 2 * spec.kv_size) // moved.shape[0]  # 2 for packed int4
    q_rows, kv_rows = spec.q_size // packing, spec.kv_size // packing
    q, k, v = np.split(moved, [q_rows, q_rows + kv_rows], axis=0)
    return np.moveaxis(split_qkv(q, k, v, spec.num_heads, spec.num_kv_heads, tp, tp_rank), 0, dim)


def unshard(name: str, parts: list, config: CheckpointConfig, full_rows: int | None = None):
    """Rebuild the full tensor from all tp ranks' parts (exact inverse of ``shard``).

    ``full_rows``: the unpadded size of dim 0 for vocab-padded tensors (default: the model's vocab_size
    or max_position_embeddings).
    """
    rule, dim = shard_rule(name, config)
    if rule == "replicate":
        if name.endswith(_SCALES) and any(not np.array_equal(parts[0], p) for p in parts[1:]):
            # ModelOpt merges by elementwise max before it quantizes; on quantized weights that would change them
            raise CheckpointError(
                f"tensor {name}: differs between tensor-parallel ranks, so the ranks' weights cannot be merged "
                "without requantizing them (ckptfmt keeps replicated scales only where every rank agrees)"
            )
        return parts[0]
    if rule == "split":
        return np.concatenate([np.asarray(p) for p in parts], axis=dim)
    spec = model_spec(config)
    if rule == "split_padded":
        if full_rows is None:
            full_rows = spec.max_position_embeddings if name == POSITION_EMBEDDING else spec.vocab_size
        return np.concatenate([np.asarray(p) for p in parts], axis=0)[:full_rows]
    moved = [np.moveaxis(np.asarray(p), dim, 0) for p in parts]
    tp = len(parts)
    rows = (spec.num_heads // tp + 2 * kv_heads_per_rank(spec.num_kv_heads, tp)) * spec.head_size
    head_size = spec.head_size * moved[0].shape[0] // rows  # halved for packed int4
    q, k, v = merge_qkv(moved, spec.num_heads, spec.num_kv_heads, head_size)
    return np.moveaxis(np.concatenate([q, k, v], axis=0), 0, dim)
