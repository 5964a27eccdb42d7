"""DeepSpeed's ``.pt`` files through ``torch_pickle``: restricted unpickling, tensors at any depth read on demand.

DeepSpeed keeps its weights nested (``optimizer_state_dict.single_partition_of_fp32_groups[i]``,
``fp32_flat_groups[i]``, ``optimizer.fp32_groups[g][p]``), so every tensor of the pickle, however deep, becomes a
``StoredTensor`` (read with ``preadv`` when needed). Beyond tensors and plain containers the pickle may only hold
DeepSpeed's few plain record classes (``ALLOWED``), rebuilt as inert stand-ins without importing deepspeed; any
other class is refused by name and never imported.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from typing import Any, cast

from ckptfmt import CheckpointError

from .source_guard import Fingerprint
from .torch_pickle import Region, StoredTensor, TorchPickle, _MetaStorages, _RegionFile, _unpickle


class _Record:
    """An inert stand-in for a DeepSpeed record object: its pickled state, kept as a dict."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict = dict(kwargs)
        if args:
            self.state["args"] = args

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {"state": state}


class ZeroStage(int):
    """``deepspeed.runtime.zero.config.ZeroStageEnum`` (an IntEnum: pickled as the stage number)."""


class LossScaler(_Record):
    """``deepspeed.runtime.fp16.loss_scaler.LossScaler`` / ``DynamicLossScaler``."""


class FragmentAddress(_Record):
    """``deepspeed.utils.tensor_fragment.fragment_address`` (numel, start of a parameter in a partition)."""


# pickled global -> stand-in; nothing else beyond torch's weights-only set is accepted
ALLOWED: tuple[tuple[type, str], ...] = (
    (ZeroStage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (LossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
)


class DeepSpeedPickle(TorchPickle):
    """One DeepSpeed ``torch.save`` file; ``root`` holds ``StoredTensor``s wherever the pickle had tensors."""

    def __init__(self, path, expected: Fingerprint | None = None):
        super().__init__(Region(path), cast(Sequence[type], ALLOWED), expected)

    def _load_zip(self, allowed: Sequence[type]) -> object:
        super()._load_zip(allowed)  # checks the archive and the pickle; only top-level tensors come back read
        archive = zipfile.ZipFile(_RegionFile(self))
        records = {info.filename: info for info in archive.infolist()}
        name = next(n for n in records if n.endswith("/data.pkl") and n.count("/") == 1)
        storages = _MetaStorages(self, records, name[: -len("data.pkl")])
        obj = _unpickle(archive.read(name), self.label, allowed, storages.persistent_load)
        return _stored_everywhere(obj, storages.stored, "")

    def _load_legacy(self, allowed: Sequence[type]) -> object:
        raise CheckpointError(f"{self.label}: not a zip torch pickle (DeepSpeed writes torch.save zip files)")

    def top(self, key: str) -> Any:
        """``root[key]``, or None when absent (optional fields: buffer_names, shared_params, ...)."""
        return self.root.get(key) if isinstance(self.root, dict) else None

    def get(self, *path: str | int) -> Any:
        """``root[path[0]][path[1]]...``; a missing key is one error naming the file and the field."""
        value: Any = self.root
        for i, key in enumerate(path):
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                field = ".".join(str(k) for k in path[: i + 1])
                raise CheckpointError(f"{self.label}: no field {field} (not a DeepSpeed checkpoint file?)") from None
        return value


def _stored_everywhere(obj: object, stored: Callable[[str, Any], StoredTensor], name: str) -> object:
    if type(obj).__name__ in ("Tensor", "Parameter") and type(obj).__module__.startswith("torch"):
        return stored(name, obj)
    if isinstance(obj, dict):
        return type(obj)((k, _stored_everywhere(v, stored, f"{name}.{k}" if name else str(k))) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_stored_everywhere(v, stored, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj


def tensor_at(value: Any, label: str, field: str) -> StoredTensor:
    if not isinstance(value, StoredTensor):
        raise CheckpointError(f"{label}: {field} is a {type(value).__name__}, not a tensor")
    return value
