"""NeMo 1 weights: torch-saved Megatron state dicts, one per (tp, pp) source rank, merged lazily.

Each ``model_weights.ckpt`` (a file, or a member of an uncompressed ``.nemo`` tar read in place) is opened with
``torch_pickle`` (torch's weights-only unpickler; only ``io.BytesIO`` is allowed beyond tensors: Transformer Engine
stores its ``_extra_state`` that way), so a pickle holding anything else is refused without running code, and each
tensor is read with ``preadv`` when needed. A merged tensor is assembled from its
tensor-parallel parts when it is loaded; pipeline stages' local layer numbers become global ones.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from ckptfmt import CheckpointError

from .lazy_source import LazyTensorSource
from .megatron_names import GATED, LAYER_TEMPLATE, normalize_name, split_layer_name, tp_split_dim
from .sources import LazyTensor
from .torch_pickle import Region, StoredTensor, TorchPickle

ShardKey = tuple[int, int]  # (tp rank, pp rank)


def load_state_dict(region: Region) -> TorchPickle:
    """A torch pickle refusing anything but tensors (and TE's BytesIO extra state); tensors read on demand."""
    return TorchPickle(region, allowed=[io.BytesIO])


class ShardedSource(LazyTensorSource):
    """A ``TensorSource`` over per-rank Megatron state dicts (any source tp x pp)."""

    def __init__(self, files: dict[ShardKey, Region], gated_mlp: bool):
        tps = sorted({tp for tp, _ in files})
        pps = sorted({pp for _, pp in files})
        if (
            {(t, p) for t in tps for p in pps} != set(files)
            or tps != list(range(len(tps)))
            or pps != list(range(len(pps)))
        ):
            raise CheckpointError(
                f"{next(iter(files.values())).label}: incomplete set of rank folders ({sorted(files)})"
            )
        self.tp, self.gated = len(tps), gated_mlp
        self.file = self.location = files[(0, 0)].path
        self._pickles: dict[ShardKey, TorchPickle] = {}
        try:  # a file that fails closes the ones opened before it
            for key, region in files.items():
                self._pickles[key] = load_state_dict(region)
            states = {key: self._tensors_of(p.label, p.state_dict()) for key, p in self._pickles.items()}
        except BaseException:
            self.close()
            raise
        self._fingerprints = {p.region.path: p.fingerprint for p in self._pickles.values()}
        self._parts: dict[str, list] = {}
        offset = 0
        for pp in pps:
            stage = [states[(tp, pp)] for tp in tps]
            local_layers = set()
            for name in stage[0]:
                layer, rest = split_layer_name(name)
                glob = name
                if layer is not None:
                    assert rest is not None  # a numbered layer name has a rest
                    glob = LAYER_TEMPLATE.format(i=layer + offset) + rest
                    local_layers.add(layer)
                try:
                    parts = [s[name] for s in stage]
                except KeyError:
                    raise CheckpointError(f"{files[(0, pp)].label}: tensor {name} missing in some tp ranks") from None
                if glob in self._parts:
                    continue  # replicated on several pipeline stages (tied embedding copy)
                self._parts[glob] = parts
            offset += len(local_layers)
        self.tensors = {
            n: LazyTensor(n, self._merged_shape(n, p), self.file, functools.partial(self._merge, n))
            for n, p in self._parts.items()
        }

    @staticmethod
    def _tensors_of(label: str, state: dict) -> dict[str, StoredTensor]:
        out = {}
        for key, value in state.items():
            name = normalize_name(str(key))
            if name is None:
                continue
            if not isinstance(value, StoredTensor):
                raise CheckpointError(f"{label}: entry {key} is a {type(value).__name__}, not a tensor")
            out[name] = value
        return out

    def _merged_shape(self, name: str, parts: list) -> tuple[int, ...]:
        dim = tp_split_dim(name)
        shape = list(parts[0].shape)
        if dim is not None and self.tp > 1:
            shape[dim] = sum(p.shape[dim] for p in parts)
        return tuple(shape)

    def _merge(self, name: str) -> np.ndarray:
        dim = tp_split_dim(name)
        if dim is None or self.tp == 1:
            return self._parts[name][0].read()
        parts = [p.read() for p in self._parts[name]]
        if self.gated and name.endswith(GATED):
            halves = [np.split(p, 2, axis=0) for p in parts]
            return np.concatenate([h[0] for h in halves] + [h[1] for h in halves], axis=0)
        return np.concatenate(parts, axis=dim)

    @property
    def dtypes(self) -> set[str]:
        return {p[0].dtype for p in self._parts.values()}

    def close(self) -> None:
        super().close()
        for p in self._pickles.values():
            p.close()
