"""Lazy tensors from weight files: safetensors (read per tensor, no torch) and torch pickles (``torch_pickle``).

A ``TensorSource`` maps tensor names to ``LazyTensor``s whose shape and dtype are known from the file
header; ``load()`` reads that one tensor with ``os.preadv`` straight into its array (never memory-mapped: a mapped
file truncated by someone else kills the process with SIGBUS, a short read is an error message), so peak memory
stays at a few tensors, not at the model size.

Every file is fingerprinted (``source_guard.Fingerprint``) when opened and checked again after each tensor is
read: a source truncated, rewritten or replaced during the run is refused rather than mixed into the output.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ckptfmt import CheckpointError, RankFileReader

from .source_guard import Fingerprint, GuardedFile
from .torch_pickle import Region, StoredTensor, TorchPickle


@dataclass(frozen=True)
class LazyTensor:
    """One tensor of a source file: shape/dtype known, data read on ``load()``."""

    name: str
    shape: tuple[int, ...]
    file: Path
    _load: Callable[[], np.ndarray]

    def load(self) -> np.ndarray:
        array = self._load()
        if tuple(array.shape) != self.shape:
            raise CheckpointError(
                f"{self.file}: tensor {self.name}: read shape {list(array.shape)}, header says {list(self.shape)}"
            )
        return array


class SafetensorsFile:
    """Tensors of one ``.safetensors`` file (header checked by ckptfmt), each read on its own with ``preadv``."""

    def __init__(self, path: Path):
        self.path = path
        self._file = GuardedFile(path)
        try:
            header = RankFileReader(path)  # validates header, dtypes, offsets and file size
            self._data_start = 8 + struct.unpack("<Q", self._file.read(0, 8, "header").tobytes())[0]
        except BaseException:
            self._file.close()
            raise
        self.fingerprint = self._file.fingerprint
        self._entries = header.entries
        self._dtypes = {name: header.spec(name)[0] for name in header.entries}

    def tensors(self) -> Iterable[LazyTensor]:
        for name, entry in self._entries.items():
            yield LazyTensor(name, tuple(entry["shape"]), self.path, functools.partial(self._read, name))

    def _read(self, name: str) -> np.ndarray:
        lo, hi = self._entries[name]["data_offsets"]
        raw = self._file.read(self._data_start + lo, hi - lo, f"tensor {name}")  # bytes, then viewed (bf16 & co.)
        return raw.view(self._dtypes[name]).reshape(self._entries[name]["shape"])

    def close(self) -> None:
        self._file.close()


class TorchFile:
    """Tensors of one torch pickle (``pytorch_model.bin``): names and shapes from its pickle, each tensor read
    with ``preadv`` (``torch_pickle``), never memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        self._pickle = TorchPickle(Region(path))
        self.fingerprint = self._pickle.fingerprint
        self._state = self._pickle.state_dict()

    def tensors(self) -> Iterable[LazyTensor]:
        for name, value in self._state.items():
            if isinstance(value, StoredTensor):
                yield LazyTensor(str(name), value.shape, self.path, value.read)

    def close(self) -> None:
        self._state = {}
        self._pickle.close()


READERS: dict[str, Callable[[Path], SafetensorsFile | TorchFile]] = {
    ".safetensors": SafetensorsFile,
    ".bin": TorchFile,
    ".pt": TorchFile,
    ".ckpt": TorchFile,
    ".pth": TorchFile,
}


class AnyTensorSource(Protocol):
    """What the converter reads from: a ``TensorSource`` or a ``lazy_source.LazyTensorSource`` (Megatron)."""

    def names(self) -> list[str]: ...
    def __contains__(self, name: str) -> bool: ...
    def get(self, name: str) -> LazyTensor: ...
    def load(self, name: str) -> np.ndarray: ...
    def open_all(self) -> None: ...
    def fingerprints(self) -> dict[Path, Fingerprint]: ...
    def close(self) -> None: ...
    def __enter__(self) -> AnyTensorSource: ...
    def __exit__(self, *_) -> None: ...


class TensorSource:
    """Name -> ``LazyTensor`` over one or more files; files are opened on first use.

    ``files`` maps each file to the tensor names it should hold (``None``: whatever it holds); a
    name promised by an index but absent from its file is reported when the file is opened.
    """

    def __init__(self, files: dict[Path, list[str] | None]):
        self._files = files
        self._promised = {n: p for p, names in files.items() for n in (names or [])}
        self._open: dict[Path, SafetensorsFile | TorchFile] = {}
        self._tensors: dict[str, LazyTensor] = {}
        for path, names in files.items():
            if names is None:
                self._open_file(path)

    def _open_file(self, path: Path) -> None:
        if path in self._open:
            return
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (named by the weight index)")
        reader = READERS[path.suffix](path)
        self._open[path] = reader
        for t in reader.tensors():
            self._tensors.setdefault(t.name, t)
        missing = [n for n, p in self._promised.items() if p == path and n not in self._tensors]
        if missing:
            raise CheckpointError(f"{path}: tensor {missing[0]} named by the weight index is not in the file")

    def names(self) -> list[str]:
        return sorted(set(self._promised) | set(self._tensors))

    def __contains__(self, name: str) -> bool:
        return name in self._promised or name in self._tensors

    def get(self, name: str) -> LazyTensor:
        if name not in self._tensors and name in self._promised:
            self._open_file(self._promised[name])
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"source weights: no tensor {name}") from None

    def load(self, name: str) -> np.ndarray:
        return self.get(name).load()

    def open_all(self) -> None:
        """Open (and so check) every file now."""
        for path in self._files:
            self._open_file(path)

    def fingerprints(self) -> dict[Path, Fingerprint]:
        """Each open file as it was when opened (compared again before the output is published)."""
        return {path: reader.fingerprint for path, reader in self._open.items()}

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()
        self._tensors.clear()

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *_) -> None:
        self.close()
