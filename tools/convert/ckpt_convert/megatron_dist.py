"""Megatron/NeMo 2 ``torch_dist`` checkpoints, read one tensor (or one layer of a stacked tensor) at a time.

The ``.metadata`` file is a plain pickle that names megatron classes; it is read with an allow-list
unpickler (torch's checkpoint metadata classes only, megatron's two subclasses mapped onto torch's), so
neither megatron nor arbitrary code is needed. Tensor data is read through torch's ``FileSystemReader``
(which loads each stored chunk with ``torch.load(weights_only=True)``) into a box of the global tensor.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError, to_numpy

from .lazy_source import LazyTensorSource
from .megatron_names import LAYER_TEMPLATE, normalize_name, split_layer_name
from .sources import LazyTensor

METADATA_FILE = ".metadata"
_TORCH_DCP = "torch.distributed.checkpoint."
_ALLOWED = {
    ("torch", "Size"),
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


@functools.cache
def _reader_and_planner():
    """torch's FileSystemReader without its pickle-based ``read_metadata``, and a one-box load planner."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            return read_metadata(Path(self.path))

    class BoxPlanner(LoadPlanner):
        """Fills ``target`` (a box of one global tensor) from the stored chunks that overlap it."""

        def __init__(self, target: torch.Tensor):
            self.target = target

        def set_up_planner(self, *args, **kwargs) -> None:
            pass

        def create_local_plan(self) -> LoadPlan:
            return LoadPlan([])

        def create_global_plan(self, global_plan):
            return global_plan

        def finish_plan(self, central_plan):
            return central_plan

        def load_bytes(self, read_item, value) -> None:
            pass

        def resolve_tensor(self, read_item) -> torch.Tensor:
            out = self.target
            for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
                out = out.narrow(dim, start, length)
            return out

        def commit_tensor(self, read_item, tensor) -> None:
            pass

    return SafeFileSystemReader, BoxPlanner


class DistCheckpoint:
    """One torch_dist directory: global tensor shapes from the metadata, boxes read on demand."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.metadata = read_metadata(directory)
        self._reader = None

    def tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Stored tensor key -> (global shape, dtype name); byte entries (``_extra_state``) left out."""
        out = {}
        for key, md in self.metadata.state_dict_metadata.items():
            if type(md).__name__ == "TensorStorageMetadata":
                out[key] = (tuple(md.size), str(md.properties.dtype).removeprefix("torch."))
        return out

    def read(self, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> np.ndarray:
        """The box ``offsets``/``sizes`` of stored tensor ``key``."""
        import torch
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        reader_cls, planner_cls = _reader_and_planner()
        if self._reader is None:
            self._reader = reader_cls(str(self.directory))
            self._reader.set_up_storage_reader(self.metadata, is_coordinator=True)
        md = self.metadata.state_dict_metadata[key]
        target = torch.empty(sizes, dtype=md.properties.dtype)
        box = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        planner = planner_cls(target)
        items = create_read_items_for_chunk_list(key, md, [box])
        try:
            self._reader.read_data(LoadPlan(items), planner).wait()
        except FileNotFoundError as err:
            raise CheckpointError(f"{self.directory}: {Path(err.filename).name} missing (tensor {key})") from None
        except Exception as err:  # truncated or corrupt .distcp file: torch raises many kinds
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.directory}: cannot read tensor {key} ({detail})") from None
        covered = sum(int(np.prod(i.lengths)) for i in items)
        if covered != int(np.prod(sizes)):
            raise CheckpointError(f"{self.directory}: tensor {key} is incomplete in the checkpoint")
        return to_numpy(target)


class DistSource(LazyTensorSource):
    """A ``TensorSource`` over a torch_dist checkpoint with Megatron names normalized.

    Stacked per-layer tensors (``decoder.layers.X`` of shape ``[layers, ...]``) appear as one tensor
    per layer (``decoder.layers.{i}.X``), each read on its own.
    """

    def __init__(self, directory: Path, num_layers: int):
        self._fingerprint(sorted(directory.iterdir()) if directory.is_dir() else [])
        self.checkpoint = DistCheckpoint(directory)
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
