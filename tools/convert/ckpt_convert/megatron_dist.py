"""Megatron/NeMo 2 ``torch_dist`` checkpoints, read one tensor (or one layer of a stacked tensor) at a time.

The ``.metadata`` file is a plain pickle that names megatron classes; it is read with an allow-list
unpickler (torch's checkpoint metadata classes only, megatron's two subclasses mapped onto torch's), so
neither megatron nor arbitrary code is needed. Each stored chunk is a ``torch.save`` blob at an offset of a ``.distcp``
file; it is read in place with ``torch_pickle`` (weights-only, ``preadv``, never memory-mapped), and only the
bytes of the requested box (one layer of a stacked tensor) are read.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError

from .lazy_source import LazyTensorSource
from .megatron_names import LAYER_TEMPLATE, normalize_name, split_layer_name
from .sources import LazyTensor
from .torch_pickle import NUMPY_DTYPES, Region, StoredTensor, TorchPickle

METADATA_FILE = ".metadata"
_TORCH_DCP = "torch.distributed.checkpoint."
_ALLOWED = {
    ("torch", "Size"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id of a plain torch DCP save (a path object, no I/O)
    ("torch.serialization", "_get_layout"),
    (_TORCH_DCP + "filesystem", "_StorageInfo"),
    *(
        (_TORCH_DCP + "metadata", n)
        for n in (
            "Metadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    ),
    *(
        (_TORCH_DCP + "planner", n)
        for n in ("SavePlan", "TensorWriteData", "WriteItem", "WriteItemType", "BytesIOWriteData")
    ),
}
# megatron's subclasses of torch's metadata / plan (extra attributes only)
_SUBSTITUTES = {
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"): (_TORCH_DCP + "metadata", "Metadata"),
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreSavePlan"): (_TORCH_DCP + "planner", "SavePlan"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata, refusing every class outside the allow-list."""

    def find_class(self, module: str, name: str):
        module, name = _SUBSTITUTES.get((module, name), (module, name))
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        import torch

        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def read_metadata(directory: Path):
    """The checkpoint's ``Metadata`` (state_dict_metadata, storage_data), read safely."""
    path = directory / METADATA_FILE
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a torch_dist checkpoint?)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({err})") from None


class DistCheckpoint:
    """One torch_dist checkpoint: global tensor shapes from the metadata, boxes read from the chunks overlapping them.

    ``files`` maps data file names to where they lie when not in ``directory`` (members of a ``.nemo`` read in
    place); ``fingerprints`` (path -> as first seen) are compared each time a file is opened again.
    """

    def __init__(self, directory: Path, files: dict[str, Region] | None = None, fingerprints: dict | None = None):
        self.directory, self.files, self.fingerprints = directory, files or {}, fingerprints or {}
        self.metadata = read_metadata(directory)
        self._chunks = {(k.fqn, tuple(k.offset or ())): v for k, v in self.metadata.storage_data.items()}

    def tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Stored tensor key -> (global shape, dtype name); byte entries (``_extra_state``) left out."""
        out = {}
        for key, md in self.metadata.state_dict_metadata.items():
            if type(md).__name__ == "TensorStorageMetadata":
                out[key] = (tuple(md.size), str(md.properties.dtype).removeprefix("torch."))
        return out

    def read(self, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> np.ndarray:
        """The box ``offsets``/``sizes`` of stored tensor ``key``: only the bytes it covers are read."""
        md = self.metadata.state_dict_metadata[key]
        dtype = str(md.properties.dtype).removeprefix("torch.")
        if dtype not in NUMPY_DTYPES:
            raise CheckpointError(f"{self.directory}: tensor {key}: dtype {dtype} is not supported")
        out, covered = np.empty(sizes, NUMPY_DTYPES[dtype]), 0
        for chunk in md.chunks:
            lo = [max(o, c) for o, c in zip(offsets, chunk.offsets)]
            hi = [min(o + n, c + m) for o, n, c, m in zip(offsets, sizes, chunk.offsets, chunk.sizes)]
            if any(h <= low for low, h in zip(lo, hi)):
                continue
            starts, lengths = [low - c for low, c in zip(lo, chunk.offsets)], [h - low for low, h in zip(lo, hi)]
            box = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, offsets))
            out[box] = self._read_chunk(key, tuple(chunk.offsets), tuple(chunk.sizes), dtype, starts, lengths)
            covered += int(np.prod([h - low for low, h in zip(lo, hi)]))
        if covered != int(np.prod(sizes)):
            raise CheckpointError(f"{self.directory}: tensor {key} is incomplete in the checkpoint")
        return out

    def _read_chunk(self, key: str, offsets: tuple, sizes: tuple, dtype: str, starts: list, lengths: list):
        """The box ``starts``/``lengths`` of the stored chunk of ``key`` at ``offsets`` (a torch.save blob inside a
        ``.distcp`` file), checked to be the tensor the metadata says."""
        info = self._chunks.get((key, offsets))
        if info is None:
            raise CheckpointError(f"{self.directory}: tensor {key}: no stored chunk at {list(offsets)}")
        name = info.relative_path
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{self.directory / METADATA_FILE}: tensor {key}: chunk file {name!r} refused")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{self.directory}: tensor {key}: transformed (compressed) chunks are not supported")
        whole = self.files.get(name) or Region(self.directory / name)
        member = f"{whole.member}, " if whole.member else ""
        region = Region(whole.path, whole.start + info.offset, info.length, f"{member}chunk at byte {info.offset}")
        blob = TorchPickle(region, expected=self.fingerprints.get(whole.path))
        try:
            stored = blob.root
            if not isinstance(stored, StoredTensor) or stored.shape != sizes or stored.dtype != dtype:
                raise CheckpointError(f"{region.label}: tensor {key}: not the {dtype} chunk of {list(sizes)} expected")
            return stored.narrow(starts, lengths).read()
        finally:
            blob.close()


class DistSource(LazyTensorSource):
    """A ``TensorSource`` over a torch_dist checkpoint with Megatron names normalized.

    Stacked per-layer tensors (``decoder.layers.X`` of shape ``[layers, ...]``) appear as one tensor
    per layer (``decoder.layers.{i}.X``), each read on its own.
    """

    def __init__(self, directory: Path, num_layers: int, files: dict[str, Region] | None = None):
        files = files or {}
        self._fingerprint(
            sorted({*(directory.iterdir() if directory.is_dir() else ()), *(r.path for r in files.values())})
        )
        self.checkpoint = DistCheckpoint(directory, files, self._fingerprints)
        self.location = directory
        self.tensors: dict[str, LazyTensor] = {}
        self.dtypes: set[str] = set()
        for key, (shape, dtype) in self.checkpoint.tensors().items():
            name = normalize_name(key)
            if name is None:
                continue
            self.dtypes.add(dtype)
            layer, rest = split_layer_name(name)
            if layer is None and rest is not None:  # stacked on dim 0
                if not shape or shape[0] != num_layers:
                    raise CheckpointError(
                        f"{directory}: stacked tensor {key} has {shape[0] if shape else 0} "
                        f"layers, the model config says {num_layers}"
                    )
                for i in range(num_layers):
                    self._add(LAYER_TEMPLATE.format(i=i) + rest, key, shape, i)
            else:
                self._add(name, key, shape, None)

    def _add(self, name: str, key: str, shape: tuple[int, ...], layer: int | None) -> None:
        if layer is None:
            offsets, sizes = (0,) * len(shape), shape
        else:
            offsets, sizes = (layer,) + (0,) * (len(shape) - 1), (1, *shape[1:])
        out_shape = sizes if layer is None else sizes[1:]

        def load() -> np.ndarray:
            return self.checkpoint.read(key, offsets, sizes).reshape(out_shape)

        self.tensors[name] = LazyTensor(name, tuple(out_shape), self.checkpoint.directory, load)
