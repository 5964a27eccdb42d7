"""Tensor transforms used by the mapping tables, each written once.

A transform takes the source arrays of one rule (in the rule's order) and the model's ``ModelSpec`` and
returns the full canonical tensor (unsharded, source dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ckptfmt import ModelSpec

Transform = Callable[[list[np.ndarray], ModelSpec], np.ndarray]


def identity(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """The single source tensor as is."""
    (a,) = arrays
    return a


def transpose(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """GPT-2 Conv1D ``[in, out]`` -> Linear ``[out, in]``."""
    (a,) = arrays
    return np.ascontiguousarray(a.T)


def concat_rows(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Separate q, k, v (weights or biases) fused into ``qkv`` rows."""
    return np.concatenate(arrays, axis=0)


def ungroup_qkv(arrays: list[np.ndarray], spec: ModelSpec, groups: int) -> np.ndarray:
    """A fused qkv stored per KV group (``groups`` x [its q heads, one k head, one v head]) -> [q; k; v].

    GPT-NeoX and old Falcon without multi-query interleave per head (groups = heads), old multi-query
    Falcon is one group, new-architecture Falcon and Megatron use one group per KV head.
    """
    (a,) = arrays
    per_group = spec.num_heads // groups + 2
    rows = a.reshape(groups, per_group, spec.head_size, *a.shape[1:])
    q = rows[:, :-2].reshape(-1, *a.shape[1:])
    k = rows[:, -2].reshape(-1, *a.shape[1:])
    v = rows[:, -1].reshape(-1, *a.shape[1:])
    return np.concatenate([q, k, v], axis=0)


def ungroup_qkv_per_head(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """GPT-NeoX ``query_key_value``: [heads, 3, head_size] rows."""
    return ungroup_qkv(arrays, spec, spec.num_heads)


def ungroup_qkv_per_kv_head(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Falcon ``query_key_value``: one group per KV head (covers all three Falcon layouts)."""
    return ungroup_qkv(arrays, spec, spec.num_kv_heads)


@dataclass(frozen=True)
class DropRows:
    """Skip the first ``count`` rows (OPT's learned positions start at offset 2). A class, so it pickles."""

    count: int

    def __call__(self, arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
        (a,) = arrays
        return a[self.count :]
