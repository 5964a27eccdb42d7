"""Lazy tensors from weight files: safetensors (read per tensor, no torch) and torch pickles.

A ``TensorSource`` maps tensor names to ``LazyTensor``s whose shape and dtype are known from the file
header; ``load()`` reads that one tensor. A safetensors tensor is read with ``os.preadv`` straight into its
array (not memory-mapped: a mapped file truncated by someone else kills the process with SIGBUS, a short read
is an error message), so peak memory stays at a few tensors, not at the model size.

Every file is fingerprinted (``source_guard.Fingerprint``) when opened and checked again after each tensor is
read: a source truncated, rewritten or replaced during the run is refused rather than mixed into the output.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError, RankFileReader, to_numpy

from .source_guard import NOTHING_WRITTEN, Fingerprint, check_unchanged


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
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.fingerprint = Fingerprint.of(os.fstat(self._fd))
            header = RankFileReader(path)  # validates header, dtypes, offsets and file size
            self._data_start = 8 + struct.unpack("<Q", os.pread(self._fd, 8, 0))[0]
        except BaseException:
            os.close(self._fd)
            raise
        self._entries = header.entries
        self._dtypes = {name: header.spec(name)[0] for name in header.entries}

    def tensors(self) -> Iterable[LazyTensor]:
        for name, entry in self._entries.items():
            yield LazyTensor(name, tuple(entry["shape"]), self.path, lambda n=name: self._read(n))

    def _read(self, name: str) -> np.ndarray:
        dtype, shape = self._dtypes[name], self._entries[name]["shape"]
        lo, hi = self._entries[name]["data_offsets"]
        raw = np.empty(hi - lo, np.uint8)  # bytes, then viewed (bfloat16 & co. have no buffer format)
        view, offset, done = memoryview(raw), self._data_start + lo, 0
        while done < hi - lo:
            try:
                n = os.preadv(self._fd, [view[done : done + (1 << 30)]], offset + done)
            except OSError as err:
                raise CheckpointError(f"{self.path}: tensor {name}: cannot read ({err.strerror})") from None
            if n == 0:
                check_unchanged(self.path, self.fingerprint)  # names how it changed
                raise CheckpointError(f"{self.path}: tensor {name}: file ends early; {NOTHING_WRITTEN}")
            done += n
        check_unchanged(self.path, self.fingerprint)
        return raw.view(dtype).reshape(shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class TorchFile:
    """Tensors of one torch pickle (``pytorch_model.bin``), loaded ``weights_only`` and memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        self.fingerprint = Fingerprint.of(os.stat(path))
        self._state = _torch_load(path)

    def tensors(self) -> Iterable[LazyTensor]:
        import torch

        for name, value in self._state.items():
            if not isinstance(value, torch.Tensor):
                continue
            yield LazyTensor(name, tuple(value.shape), self.path, lambda v=value: self._copy(v))

    def _copy(self, value) -> np.ndarray:
        """The tensor's data, copied out of the mapping; the file is checked before (a mapped page past a
        truncated end would be SIGBUS) and after the copy."""
        check_unchanged(self.path, self.fingerprint)
        array = to_numpy(value).copy()
        check_unchanged(self.path, self.fingerprint)
        return array

    def close(self) -> None:
        self._state = {}


def _torch_load(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading .bin files needs torch (pip install 'ckpt-convert[hf]')") from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as err:  # torch raises many types for corrupt or unsafe pickles
        raise CheckpointError(f"{path}: cannot load ({_first_line(err)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (got {type(state).__name__})")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


READERS: dict[str, Callable[[Path], SafetensorsFile | TorchFile]] = {
    ".safetensors": SafetensorsFile,
    ".bin": TorchFile,
    ".pt": TorchFile,
    ".ckpt": TorchFile,
    ".pth": TorchFile,
}


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
