"""Torch pickles (``torch.save`` files) read without torch's memory map: names and shapes first, bytes on demand.

A ``torch.save`` file is a zip archive whose ``<archive>/data.pkl`` names every tensor (dtype, shape, strides, storage
key and offset) and whose ``<archive>/data/<key>`` records, stored uncompressed, hold the storages' bytes. The pickle
is read with torch's weights-only unpickler (tensors and the ``allowed`` classes only: no code runs) onto storages of
the ``meta`` device, so nothing is loaded; each tensor is later read with ``os.preadv`` (``GuardedFile``) from its
record's offset into a fresh array, and the file is checked unchanged after each read. A file truncated meanwhile is
one ``error:`` line, never SIGBUS.

The blob may be a byte range of a larger file (``Region``): a ``model_weights.ckpt`` inside an uncompressed ``.nemo``
tar, a chunk of a ``.distcp`` file. Legacy (pre-zip) pickles are read whole into memory, up to ``LEGACY_MAX`` bytes.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError, to_numpy
from ckptfmt.dtypes import DtypeTable

from .source_guard import Fingerprint, GuardedFile

MAX_PICKLE = 256 << 20  # data.pkl holds names and shapes only
LEGACY_MAX = 2 << 30  # a pre-zip pickle is read whole: bounded
NUMPY_DTYPES = DtypeTable(  # torch dtype name -> numpy dtype (ml_dtypes loads only for bfloat16 and fp8)
    {
        "float64": "float64",
        "float32": "float32",
        "float16": "float16",
        "bfloat16": "ml_dtypes.bfloat16",
        "float8_e4m3fn": "ml_dtypes.float8_e4m3fn",
        "float8_e5m2": "ml_dtypes.float8_e5m2",
        "int64": "int64",
        "int32": "int32",
        "int16": "int16",
        "int8": "int8",
        "uint8": "uint8",
        "bool": "bool",
    }
)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, struct.error)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length


@dataclass(frozen=True)
class Region:
    """Where a ``torch.save`` blob lies: a whole file, or ``size`` bytes at ``start`` (a tar member, a chunk)."""

    path: Path
    start: int = 0
    size: int | None = None  # None: to the end of the file
    member: str = ""  # named in errors: the tar member or chunk

    @property
    def label(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a torch pickle: what it is, and where its storage lies (``read`` fetches it)."""

    name: str
    dtype: str  # torch's name: float32, bfloat16, ...
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # elements
    offset: int  # elements into the storage
    source: TorchPickle
    position: int = 0  # byte position of the storage in the file (zip) ...
    memory: np.ndarray | None = None  # ... or the storage itself (legacy pickles, read whole)

    def narrow(self, starts: Sequence[int], lengths: Sequence[int]) -> StoredTensor:
        """The box ``starts``/``lengths`` of this tensor (bounds checked by the caller)."""
        offset = self.offset + sum(s * st for s, st in zip(starts, self.stride))
        return replace(self, shape=tuple(lengths), offset=offset)

    def read(self) -> np.ndarray:
        """The tensor as a fresh, contiguous numpy array (only the bytes it spans are read)."""
        dtype = NUMPY_DTYPES[self.dtype]
        if 0 in self.shape:
            return np.empty(self.shape, dtype)
        span = 1 + sum((n - 1) * st for n, st in zip(self.shape, self.stride))
        if self.memory is not None:
            raw = self.memory[self.offset * dtype.itemsize : (self.offset + span) * dtype.itemsize]
        else:
            where = self.position + self.offset * dtype.itemsize
            raw = self.source.read_bytes(where, span * dtype.itemsize, f"tensor {self.name}")
        flat = raw.view(dtype)
        if self.stride == _contiguous(self.shape):
            return flat.reshape(self.shape) if self.memory is None else flat.reshape(self.shape).copy()
        strides = tuple(st * dtype.itemsize for st in self.stride)
        return np.lib.stride_tricks.as_strided(flat, self.shape, strides).copy()


class TorchPickle:
    """One ``torch.save`` blob (``Region``): its object with tensors as ``StoredTensor``s, read on demand."""

    def __init__(self, region: Region, allowed: Sequence[type] = (), expected: Fingerprint | None = None):
        self.region, self.label = region, region.label
        self.file = GuardedFile(region.path, expected)
        self.fingerprint = self.file.fingerprint
        try:
            self.size = self.file.size - region.start if region.size is None else region.size
            if region.start + self.size > self.file.size:
                raise CheckpointError(f"{self.label}: ends past the end of the file (truncated?)")
            magic = self.read_bytes(0, min(4, self.size), "header").tobytes()
            self.root = self._load_zip(allowed) if magic == b"PK\x03\x04" else self._load_legacy(allowed)
        except BaseException:
            self.file.close()
            raise

    def read_bytes(self, position: int, size: int, what: str) -> np.ndarray:
        """``size`` bytes at ``position`` inside the region (checked exact; the file checked unchanged)."""
        if position < 0 or position + size > self.size:
            raise CheckpointError(f"{self.label}: {what} lies outside the file")
        return self.file.read(self.region.start + position, size, what)

    def state_dict(self) -> dict:
        """The pickled dict (a nested ``state_dict`` unwrapped); anything else is refused."""
        state = self.root
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.label}: not a state dict (got {type(state).__name__})")
        return state

    def close(self) -> None:
        self.file.close()

    def _load_zip(self, allowed: Sequence[type]) -> object:
        try:
            archive = zipfile.ZipFile(_RegionFile(self))
            names = {info.filename: info for info in archive.infolist()}
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(f"{self.label}: cannot load (no single <archive>/data.pkl record)")
            info = names[pickles[0]]
            if info.file_size > MAX_PICKLE:
                raise CheckpointError(f"{self.label}: cannot load (data.pkl claims {info.file_size} bytes)")
            with archive.open(info) as f:
                data = f.read(MAX_PICKLE + 1)
            order = names.get(pickles[0][: -len("data.pkl")] + "byteorder")
            if order is not None and order.file_size < 16 and archive.read(order) != b"little":
                raise CheckpointError(f"{self.label}: cannot load (big-endian tensors are not supported)")
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            EOFError,
            ValueError,
            NotImplementedError,
            struct.error,
        ) as err:
            raise CheckpointError(f"{self.label}: cannot load (not a valid torch zip file: {err})") from None
        if not data.endswith(pickle.STOP):
            raise CheckpointError(f"{self.label}: cannot load (data.pkl is truncated)")
        prefix = pickles[0][: -len("data.pkl")]
        storages = _MetaStorages(self, names, prefix)
        obj = _unpickle(data, self.label, allowed, storages.persistent_load)
        return _with_stored_tensors(obj, storages.stored)

    def _load_legacy(self, allowed: Sequence[type]) -> object:
        if self.size > LEGACY_MAX:
            raise CheckpointError(
                f"{self.label}: a legacy (pre-zip) torch pickle of {self.size / 1e9:.1f} GB: refused (read whole, "
                f"at most {LEGACY_MAX / 1e9:.1f} GB); re-save it with a current torch.save"
            )
        torch = _torch(self.label)
        try:  # read through preads (checked), not a memory map
            with torch.serialization.safe_globals(list(allowed)):
                obj = torch.load(io.BufferedReader(_RegionFile(self)), map_location="cpu", weights_only=True)
        except CheckpointError:
            raise
        except Exception as err:  # torch raises many types for corrupt or unsafe pickles
            raise _load_error(self.label, err) from None

        def stored(name: str, t) -> StoredTensor:
            array = to_numpy(t).reshape(-1).view(np.uint8)
            shape = tuple(t.shape)
            return StoredTensor(name, _dtype_name(t, self.label, name), shape, _contiguous(shape), 0, self, 0, array)

        return _with_stored_tensors(obj, stored)


class _MetaStorages:
    """``persistent_load`` for the weights-only unpickler: each storage becomes a ``meta`` storage of its size,
    remembered with the file position of its (uncompressed) record."""

    def __init__(self, source: TorchPickle, records: dict[str, zipfile.ZipInfo], prefix: str):
        self.source, self.records, self.prefix = source, records, prefix
        self.by_key: dict[str, object] = {}
        self.where: dict[int, tuple[str, int, int]] = {}  # storage id -> (key, position, bytes)
        self._keep: list = []  # storage ids stay valid while their storages live

    def persistent_load(self, saved_id):
        torch = _torch(self.source.label)
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unknown persistent id {saved_id!r:.80}")
        _, storage_type, key, _location, numel = saved_id
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0 or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"malformed storage reference {saved_id!r:.80}")
        if key not in self.by_key:
            nbytes = numel * torch._utils._element_size(dtype)
            position = self._record(key, nbytes)
            untyped = torch.UntypedStorage(nbytes, device="meta")
            self._keep.append(untyped)
            self.where[untyped._cdata] = (key, position, nbytes)
            self.by_key[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self.by_key[key]

    def _record(self, key: str, nbytes: int) -> int:
        """File position of record ``data/<key>``, which must be stored uncompressed and hold ``nbytes``."""
        info = self.records.get(f"{self.prefix}data/{key}")
        if info is None:
            raise CheckpointError(f"{self.source.label}: storage record data/{key} missing")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
            raise CheckpointError(
                f"{self.source.label}: storage record data/{key} is compressed or not {nbytes} bytes long"
            )
        header = self.source.read_bytes(info.header_offset, _LOCAL_HEADER.size, f"record data/{key}").tobytes()
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise CheckpointError(f"{self.source.label}: record data/{key}: bad zip local header")
        position = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if position + nbytes > self.source.size:
            raise CheckpointError(f"{self.source.label}: record data/{key} runs past the end of the file")
        return position

    def stored(self, name: str, t) -> StoredTensor:
        key, position, nbytes = self.where[t.untyped_storage()._cdata]
        dtype = _dtype_name(t, self.source.label, name)
        shape, stride, offset = tuple(t.shape), tuple(t.stride()), t.storage_offset()
        last = offset + sum((n - 1) * st for n, st in zip(shape, stride))
        itemsize = NUMPY_DTYPES[dtype].itemsize
        if 0 not in shape and (min(stride, default=0) < 0 or (last + 1) * itemsize > nbytes):
            raise CheckpointError(f"{self.source.label}: tensor {name} lies outside its storage data/{key}")
        return StoredTensor(name, dtype, shape, stride, offset, self.source, position)


def _unpickle(data: bytes, label: str, allowed: Sequence[type], persistent_load) -> object:
    torch = _torch(label)
    from torch._weights_only_unpickler import Unpickler

    try:
        with torch.serialization.safe_globals(list(allowed)):
            unpickler = Unpickler(io.BytesIO(data), encoding="utf-8")
            # pickle's documented hook, set on the instance
            unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
            return unpickler.load()
    except CheckpointError:
        raise
    except Exception as err:  # corrupt or unsafe pickles raise many types
        raise _load_error(label, err) from None


def _load_error(label: str, err: BaseException) -> CheckpointError:
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if "weights only load failed" in first.lower() or "unsupported global" in text.lower():
        detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "global" in ln), first)
        return CheckpointError(f"{label}: refused: the pickle holds non-tensor objects ({detail})")
    return CheckpointError(f"{label}: cannot load ({first})")


def _with_stored_tensors(obj, stored) -> object:
    """``obj`` with its tensors (the object itself, a dict's values, a nested ``state_dict``'s values) replaced by
    ``stored(name, tensor)``."""
    if _is_tensor(obj):
        return stored("", obj)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "state_dict" and isinstance(value, dict):
                out[key] = _with_stored_tensors(value, stored)
            else:
                out[key] = stored(str(key), value) if _is_tensor(value) else value
        return out
    return obj


def _is_tensor(value) -> bool:
    return type(value).__name__ in ("Tensor", "Parameter") and type(value).__module__.startswith("torch")


def _dtype_name(t, label: str, name: str) -> str:
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in NUMPY_DTYPES:
        raise CheckpointError(f"{label}: tensor {name}: dtype {dtype} is not supported")
    return dtype


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _torch(label: str):
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{label}: reading torch pickles needs torch (pip install 'ckpt-convert[hf]')") from None
    return torch


class _RegionFile(io.RawIOBase):
    """A read-only, seekable file object over a ``TorchPickle``'s region (for ``zipfile``)."""

    def __init__(self, source: TorchPickle):
        self.source, self.pos = source, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.pos, self.source.size)[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.source.size - self.pos))
        if n:
            memoryview(buffer).cast("B")[:n] = self.source.read_bytes(self.pos, n, "zip directory").data
            self.pos += n
        return n
