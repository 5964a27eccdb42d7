"""DeepSpeed's ``.pt`` files through ``torch_pickle``: restricted unpickling, tensors at any depth read on demand.

DeepSpeed keeps its weights nested (``optimizer_state_dict.single_partition_of_fp32_groups[i]``,
``fp32_flat_groups[i]``, ``optimizer.fp32_groups[g][p]``), so every tensor of the pickle, however deep, becomes a
``StoredTensor`` (read with ``preadv`` when needed). Beyond tensors and plain containers the pickle may only hold
DeepSpeed's few plain record classes (``ALLOWED``), rebuilt as inert stand-ins without importing deepspeed; any
other class is refused by name and never imported. Megatron-DeepSpeed adds its client state: the ``args``
namespace (kept as a dict: ``megatron_args``), its model-type enum and numpy's RNG state (arrays kept as inert
records, never rebuilt).
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


class Namespace(_Record):
    """``argparse.Namespace`` (Megatron-DeepSpeed's ``args``): its attributes, kept in ``state``."""


class MegatronEnum(_Record):
    """A Megatron enum member (``ModelType``...), pickled as the enum called with its value."""


class NumpyRecord(_Record):
    """numpy's ``_reconstruct`` / ``ndarray`` / ``dtype`` (the RNG state): arguments and state kept, nothing built."""


# pickled global -> stand-in; nothing else beyond torch's weights-only set is accepted
ALLOWED: tuple[tuple[type, str], ...] = (
    (ZeroStage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (LossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
    (Namespace, "argparse.Namespace"),
    *((MegatronEnum, f"{m}.{n}") for m in ("megatron.core.enums", "megatron.model.enums") for n in ("ModelType",)),
    *((NumpyRecord, f"{m}.multiarray._reconstruct") for m in ("numpy.core", "numpy._core")),
    (NumpyRecord, "numpy.ndarray"),
    (NumpyRecord, "numpy.dtype"),
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


def megatron_args(states: DeepSpeedPickle) -> dict | None:
    """Megatron-DeepSpeed's ``args`` namespace as a dict (None when the file has none)."""
    args = states.top("args")
    return dict(args.state) if isinstance(args, Namespace) else None


def flat_module(states: DeepSpeedPickle) -> dict[str, Any]:
    """``module`` with nested dicts (Megatron-DeepSpeed's save layout) flattened to dotted names."""
    module = states.get("module")
    if not isinstance(module, dict):
        raise CheckpointError(f"{states.label}: field module is a {type(module).__name__}, not a state dict")
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str, depth: int) -> None:
        for key, value in d.items():
            if isinstance(value, dict) and depth < 8:
                walk(value, f"{prefix}{key}.", depth + 1)
            else:
                out[f"{prefix}{key}"] = value

    walk(module, "", 0)
    return out


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
