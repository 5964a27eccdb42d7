"""NeMo 1 weights: torch-saved Megatron state dicts, one per (tp, pp) source rank, merged lazily.

Each ``model_weights.ckpt`` is loaded with ``torch.load(weights_only=True, mmap=True)`` (only
``io.BytesIO`` is allowed beyond tensors: Transformer Engine stores its ``_extra_state`` that way), so
a pickle holding anything else is refused without running code. A merged tensor is assembled from its
tensor-parallel parts when it is loaded; pipeline stages' local layer numbers become global ones.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError, to_numpy

from .lazy_source import LazyTensorSource
from .megatron_names import GATED, LAYER_TEMPLATE, normalize_name, split_layer_name, tp_split_dim
from .sources import LazyTensor

ShardKey = tuple[int, int]  # (tp rank, pp rank)


def load_state_dict(path: Path) -> dict:
    """A state dict from a torch pickle, refusing anything but tensors (and TE's BytesIO extra state)."""
    import torch

    try:
        with torch.serialization.safe_globals([io.BytesIO]):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:  # the legacy (pre-zip) format cannot be memory-mapped
                if "mmap" not in str(err):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as err:  # torch raises many types for corrupt, truncated or unsafe pickles
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only load failed" in first.lower() or "Unsupported global" in str(err):
            detail = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "global" in ln), first)
            raise CheckpointError(f"{path}: refused: the pickle holds non-tensor objects ({detail})") from None
        raise CheckpointError(f"{path}: cannot load ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (got {type(state).__name__})")
    return state


class ShardedSource(LazyTensorSource):
    """A ``TensorSource`` over per-rank Megatron state dicts (any source tp x pp)."""

    def __init__(self, files: dict[ShardKey, Path], gated_mlp: bool):
        tps = sorted({tp for tp, _ in files})
        pps = sorted({pp for _, pp in files})
        if (
            {(t, p) for t in tps for p in pps} != set(files)
            or tps != list(range(len(tps)))
            or pps != list(range(len(pps)))
        ):
            raise CheckpointError(
                f"{next(iter(files.values())).parent.parent}: incomplete set of rank folders ({sorted(files)})"
            )
        self.tp, self.gated = len(tps), gated_mlp
        self.file = self.location = files[(0, 0)]
        self._fingerprint(list(files.values()))
        states = {key: self._tensors_of(path, load_state_dict(path)) for key, path in files.items()}
        self._parts: dict[str, list] = {}
        offset = 0
        for pp in pps:
            stage = [states[(tp, pp)] for tp in tps]
            local_layers = set()
            for name in stage[0]:
                layer, rest = split_layer_name(name)
                glob = name if layer is None else LAYER_TEMPLATE.format(i=layer + offset) + rest
                if layer is not None:
                    local_layers.add(layer)
                try:
                    parts = [s[name] for s in stage]
                except KeyError:
                    raise CheckpointError(f"{files[(0, pp)].parent}: tensor {name} missing in some tp ranks") from None
                if glob in self._parts:
                    continue  # replicated on several pipeline stages (tied embedding copy)
                self._parts[glob] = parts
            offset += len(local_layers)
        self.tensors = {
            n: LazyTensor(n, self._merged_shape(n, p), self.file, lambda n=n: self._merge(n))
            for n, p in self._parts.items()
        }

    @staticmethod
    def _tensors_of(path: Path, state: dict) -> dict:
        out = {}
        for key, value in state.items():
            name = normalize_name(str(key))
            if name is None:
                continue
            if type(value).__name__ != "Tensor":
                raise CheckpointError(f"{path}: entry {key} is a {type(value).__name__}, not a tensor")
            out[name] = value
        return out

    def _merged_shape(self, name: str, parts: list) -> tuple[int, ...]:
        dim = tp_split_dim(name)
        shape = list(parts[0].shape)
        if dim is not None and self.tp > 1:
            shape[dim] = sum(p.shape[dim] for p in parts)
        return tuple(shape)

    def _merge(self, name: str) -> np.ndarray:
        parts = [to_numpy(p) for p in self._parts[name]]
        dim = tp_split_dim(name)
        if dim is None or self.tp == 1:
            return parts[0].copy()
        if self.gated and name.endswith(GATED):
            halves = [np.split(p, 2, axis=0) for p in parts]
            return np.concatenate([h[0] for h in halves] + [h[1] for h in halves], axis=0)
        return np.concatenate(parts, axis=dim)

    @property
    def dtypes(self) -> set[str]:
        return {str(p[0].dtype).removeprefix("torch.") for p in self._parts.values()}
