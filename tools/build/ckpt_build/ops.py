"""The op interface the decoder network is written against, with TensorRT's semantics.

Two lowerings implement it: ``lower_trt.TrtOps`` (adds TensorRT layers) and ``lower_torch.TorchOps``
(computes on torch CPU tensors). Semantics every lowering follows:

- Strong typing: the inputs of one op share a dtype; nothing converts implicitly (``cast`` does).
- Dtypes are names: ``float32``, ``float16``, ``bfloat16``, ``int32``, ``int64``, ``int8``, ``int4``, ``fp8``,
  ``bool``.
- ``reshape`` dims: ``0`` copies the input's dim at that index, ``-1`` is inferred (one at most).
- ``attention`` does NOT scale by 1/sqrt(head_size): q arrives pre-scaled. ``mask`` is bool
  ``[B, 1, Sq, Skv]`` (True = attend); q ``[B, Nq, Sq, D]``, k/v ``[B, Nkv, Skv, D]``, Nq divisible by Nkv
  (query head h reads kv head ``h // (Nq / Nkv)``).
- ``kv_cache_update(cache, update, write_index)``: ``cache[b, :, write_index[b] + s, :] = update[b, :, s, :]``;
  the result is the cache itself (the engine aliases the output to the input buffer).
- ``rope(x, cos, sin, positions, interleaved, rotary_dim)``: x ``[B, N, S, D]``, tables
  ``[max_pos, rotary_dim / 2]``, positions ``[B, S]``; the first ``rotary_dim`` dims rotate
  (rotate-half, or pairs (2i, 2i+1) when interleaved), the rest pass through.
- ``dequantize(q, scale, dtype)``: ``q * scale`` in ``dtype``; ``scale`` is 1-D along ``axis`` (per channel)
  or has q's rank with block dims divided (per group).
- ``quantize(x, scale, dtype)``: TensorRT's IQuantizeLayer with a per-tensor scale (``[1] * rank``, x's dtype):
  ``x / scale`` saturated to ``dtype``'s range, ``int8`` rounded half to even into [-128, 127], ``fp8`` (e4m3fn)
  clamped to +-448 and rounded to the nearest e4m3 value. ``dequantize`` of its output gives back x's dtype.
- ``all_reduce`` sums over the tensor-parallel ranks; ``all_gather`` concatenates the ranks' tensors on dim 0.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from ckptfmt.engine import IoTensor

Tensor = Any  # trt.ITensor or torch.Tensor


class Ops(Protocol):
    def scope(self, name: str) -> AbstractContextManager[None]:
        """Names what is added inside (TensorRT: layers ``scope/op#n``, unique per network; torch: nothing)."""

    def input(self, spec: IoTensor) -> Tensor: ...

    def output(self, spec: IoTensor, x: Tensor) -> None: ...

    def constant(
        self, key: str, array: np.ndarray, dtype: str | None = None, shape: tuple[int, ...] | None = None
    ) -> Tensor:
        """A constant from ``array`` (kept alive, not copied); ``dtype='int4'`` + logical ``shape`` for packed
        int4. ``key`` names the weight (lowerings may cache on it)."""

    def scalar(self, value: float | int, dtype: str, rank: int) -> Tensor:
        """A constant of shape ``[1] * rank`` (broadcasts in elementwise ops)."""

    def matmul(self, a: Tensor, b: Tensor, transpose_b: bool = False) -> Tensor: ...

    def add(self, a: Tensor, b: Tensor) -> Tensor: ...

    def sub(self, a: Tensor, b: Tensor) -> Tensor: ...

    def mul(self, a: Tensor, b: Tensor) -> Tensor: ...

    def div(self, a: Tensor, b: Tensor) -> Tensor: ...

    def less(self, a: Tensor, b: Tensor) -> Tensor:
        """bool ``a < b`` (broadcasting)."""

    def logical_and(self, a: Tensor, b: Tensor) -> Tensor: ...

    def where(self, cond: Tensor, a: Tensor, b: Tensor) -> Tensor: ...

    def sqrt(self, x: Tensor) -> Tensor: ...

    def unary(self, x: Tensor, op: str) -> Tensor:
        """Elementwise ``abs``, or ``round`` (to the nearest integer, ties to even)."""

    def maximum(self, a: Tensor, b: Tensor) -> Tensor: ...

    def minimum(self, a: Tensor, b: Tensor) -> Tensor: ...

    def reduce_mean_last(self, x: Tensor) -> Tensor:
        """Mean over the last dim, kept as size 1."""

    def reduce_max_last(self, x: Tensor) -> Tensor:
        """Maximum over the last dim, kept as size 1."""

    def activation(self, x: Tensor, kind: str) -> Tensor:
        """``relu``, ``gelu_erf``, ``gelu_tanh``, ``sigmoid``, ``tanh``."""

    def softmax_last(self, x: Tensor) -> Tensor:
        """Softmax over the last dim (``-inf`` entries get 0)."""

    def layer_norm(self, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        """Over the last dim; weight/bias have x's rank ``[1, .., H]``."""

    def cast(self, x: Tensor, dtype: str) -> Tensor: ...

    def reshape(self, x: Tensor, dims: tuple[int, ...]) -> Tensor: ...

    def transpose(self, x: Tensor, perm: tuple[int, ...]) -> Tensor: ...

    def slice_last(self, x: Tensor, start: int, size: int) -> Tensor:
        """``x[..., start:start + size]`` (leading dims may be dynamic)."""

    def gather(self, table: Tensor, indices: Tensor, axis: int) -> Tensor:
        """numpy ``take``: output = table.shape[:axis] + indices.shape + table.shape[axis+1:]."""

    def gather_batched(self, x: Tensor, indices: Tensor) -> Tensor:
        """``x[b, indices[b], ...]`` for x ``[B, S, ...]``, indices ``[B]`` -> ``[B, ...]``."""

    def rope(
        self, x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, interleaved: bool, rotary_dim: int
    ) -> Tensor: ...

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor: ...

    def kv_cache_update(self, cache: Tensor, update: Tensor, write_index: Tensor) -> Tensor: ...

    def dequantize(self, q: Tensor, scale: Tensor, dtype: str, axis: int | None = None) -> Tensor: ...

    def quantize(self, x: Tensor, scale: Tensor, dtype: str) -> Tensor: ...

    def all_reduce(self, x: Tensor) -> Tensor: ...

    def all_gather(self, x: Tensor) -> Tensor: ...
