"""Flax msgpack files (``flax.serialization.to_bytes``) walked without loading them: where each array's bytes lie.

A flax state file is one msgpack map of maps whose leaves are ext type 1 values, each holding the msgpack triple
``(shape, dtype name, row-major bytes)``; arrays over 1 GiB are stored as a map ``{"__msgpack_chunked_array__": true,
"shape": {"0": d0, ...}, "chunks": {"0": ext, ...}}`` of flat pieces. ``scan`` reads only the headers (``pread`` of a
few bytes at a time) and returns, per leaf path, the shape, dtype and byte ranges; arrays are read later, one at a
time, with ``GuardedFile.read``. Nothing is unpickled or executed: msgpack carries data only.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from ckptfmt import DTYPES, CheckpointError

from .source_guard import GuardedFile

ND_ARRAY = 1  # flax's ext type code of an ndarray (2: complex scalar, 3: numpy scalar)
CHUNKED = "__msgpack_chunked_array__"
MAX_DEPTH = 32
DTYPE_NAMES = ("float32", "float16", "bfloat16")
# msgpack type byte -> (kind, bytes of its big-endian length)
SIZED = {0xC4: ("bin", 1), 0xC5: ("bin", 2), 0xC6: ("bin", 4), 0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4)}
SIZED |= {0xDC: ("array", 2), 0xDD: ("array", 4), 0xDE: ("map", 2), 0xDF: ("map", 4)}


@dataclass(frozen=True)
class StoredArray:
    """One array of the file: ``pieces`` are (offset, bytes) runs that, end to end, are its C-order data."""

    shape: tuple[int, ...]
    dtype: str
    pieces: tuple[tuple[int, int], ...]


class _Reader:
    """Sequential msgpack header reads from a ``GuardedFile``; payloads are skipped, never read."""

    def __init__(self, file: GuardedFile, label: str):
        self.file, self.label, self.pos = file, label, 0

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.label}: not a flax msgpack file ({what} at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if self.pos + n > self.file.size:
            raise self.fail("truncated")
        out = self.file.read(self.pos, n, "msgpack header").tobytes()
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def skip(self, n: int) -> int:
        """Skip ``n`` payload bytes; their offset."""
        if self.pos + n > self.file.size:
            raise self.fail("truncated")
        start, self.pos = self.pos, self.pos + n
        return start

    def head(self) -> tuple[str, int]:
        """The next value's kind (map, array, str, bin, ext<code>, int, float, nil, bool) and length or value."""
        b = self.take(1)[0]
        if b <= 0x7F or b >= 0xE0:
            return "int", b if b <= 0x7F else b - 0x100
        if 0x80 <= b <= 0x8F:
            return "map", b & 0x0F
        if 0x90 <= b <= 0x9F:
            return "array", b & 0x0F
        if 0xA0 <= b <= 0xBF:
            return "str", b & 0x1F
        if b in SIZED:
            kind, width = SIZED[b]
            return kind, self.uint(width)
        if b in (0xC7, 0xC8, 0xC9):
            n = self.uint({0xC7: 1, 0xC8: 2, 0xC9: 4}[b])
            return f"ext{self.take(1)[0]}", n
        if 0xD4 <= b <= 0xD8:
            code = self.take(1)[0]
            return f"ext{code}", 1 << (b - 0xD4)
        if 0xCC <= b <= 0xCF:
            return "int", self.uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            return "int", int.from_bytes(self.take(n), "big", signed=True)
        if b in (0xCA, 0xCB):
            return "float", int(struct.unpack(">f" if b == 0xCA else ">d", self.take(4 if b == 0xCA else 8))[0])
        if b in (0xC0, 0xC2, 0xC3):
            return "nil" if b == 0xC0 else "bool", b == 0xC3
        raise self.fail(f"byte 0x{b:02x}")

    def text(self) -> str:
        kind, n = self.head()
        if kind != "str":
            raise self.fail(f"a {kind} where a key was expected")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise self.fail("a key that is not UTF-8") from None


def scan(file: GuardedFile, label: str) -> dict[tuple[str, ...], StoredArray]:
    """Every array leaf of the msgpack state in ``file`` by its key path (headers only)."""
    reader = _Reader(file, label)
    out: dict[tuple[str, ...], StoredArray] = {}
    _value(reader, (), out, 0)
    if reader.pos != file.size:
        raise reader.fail("trailing data")
    return out


def _value(r: _Reader, path: tuple[str, ...], out: dict, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise r.fail("nesting too deep")
    kind, n = r.head()
    where = "/".join(path) or "top level"
    if kind == f"ext{ND_ARRAY}":
        out[path] = _ndarray(r, r.pos + n, where)
        return
    if kind != "map":
        _skip(r, kind, n, depth)  # a scalar, string or list (a TrainState's step): not a parameter
        return
    if n * 2 > r.file.size - r.pos:
        raise r.fail("a map longer than the file")
    start = r.pos
    first = r.text() if n else None
    r.pos = start
    if first == CHUNKED:
        out[path] = _chunked(r, n, where)
        return
    for _ in range(n):
        key = r.text()
        _value(r, (*path, key), out, depth + 1)


def _skip(r: _Reader, kind: str, n: int, depth: int) -> None:
    """Step over a value that is not an array (its head already read)."""
    if depth > MAX_DEPTH:
        raise r.fail("nesting too deep")
    if kind in ("str", "bin") or kind.startswith("ext"):
        r.skip(n)
    elif kind in ("array", "map"):
        count = n * (2 if kind == "map" else 1)
        if count > r.file.size - r.pos:
            raise r.fail(f"a {kind} longer than the file")
        for _ in range(count):
            _skip(r, *r.head(), depth + 1)


def _ndarray(r: _Reader, end: int, where: str) -> StoredArray:
    """The ext payload ``(shape, dtype name, bytes)``."""
    kind, n = r.head()
    if (kind, n) != ("array", 3):
        raise r.fail(f"{where}: array record is a {kind}")
    kind, ndim = r.head()
    if kind != "array" or ndim > 16:
        raise r.fail(f"{where}: shape is not a short list")
    shape = []
    for _ in range(ndim):
        kind, d = r.head()
        if kind != "int" or d < 0:
            raise r.fail(f"{where}: shape entry is not a size")
        shape.append(d)
    dtype = r.text()
    if dtype not in DTYPE_NAMES:
        raise CheckpointError(f"{r.label}: {where}: dtype {dtype!r:.40} (read: {', '.join(DTYPE_NAMES)})")
    kind, size = r.head()
    itemsize = DTYPES[dtype].itemsize
    if kind != "bin" or size != math.prod(shape) * itemsize:
        raise r.fail(f"{where}: data of {size} bytes for shape {shape} {dtype}")
    offset = r.skip(size)
    if r.pos != end:
        raise r.fail(f"{where}: array record length")
    return StoredArray(tuple(shape), dtype, ((offset, size),))


def _chunked(r: _Reader, n: int, where: str) -> StoredArray:
    """flax's chunked form: flat pieces in key order "0", "1", ... concatenated, then reshaped."""
    fields: dict[str, object] = {}
    for _ in range(n):
        key = r.text()
        if key == CHUNKED:
            r.head()
        elif key in ("shape", "chunks"):
            part: dict[tuple[str, ...], StoredArray] = {}
            if key == "shape":
                fields[key] = _int_map(r, where)
                continue
            _value(r, (), part, MAX_DEPTH - 1)
            fields[key] = part
        else:
            raise r.fail(f"{where}: chunked array field {key!r:.40}")
    shape, chunks = fields.get("shape"), fields.get("chunks")
    if not isinstance(shape, tuple) or not isinstance(chunks, dict) or not chunks:
        raise r.fail(f"{where}: chunked array without shape or chunks")
    ordered = [chunks.get((str(i),)) for i in range(len(chunks))]
    if any(c is None or len(c.shape) != 1 for c in ordered) or len({c.dtype for c in ordered if c}) != 1:
        raise r.fail(f"{where}: chunks are not flat pieces 0..{len(chunks) - 1} of one dtype")
    pieces = tuple(p for c in ordered if c for p in c.pieces)
    if sum(c.shape[0] for c in ordered if c) != math.prod(shape):
        raise r.fail(f"{where}: chunks do not add up to shape {list(shape)}")
    return StoredArray(shape, ordered[0].dtype if ordered[0] else "", pieces)


def _int_map(r: _Reader, where: str) -> tuple[int, ...]:
    """A shape stored as ``{"0": d0, "1": d1, ...}``."""
    kind, n = r.head()
    if kind != "map" or n > 16:
        raise r.fail(f"{where}: chunked array shape")
    dims: dict[str, int] = {}
    for _ in range(n):
        key = r.text()
        kind, d = r.head()
        if kind != "int" or d < 0:
            raise r.fail(f"{where}: chunked array shape")
        dims[key] = d
    try:
        return tuple(dims[str(i)] for i in range(n))
    except KeyError:
        raise r.fail(f"{where}: chunked array shape") from None


def read_array(file: GuardedFile, array: StoredArray, what: str, index: int | None = None) -> np.ndarray:
    """The array (``index``: only ``array[index]``, the bytes of that slice alone), as its dtype."""
    dtype = DTYPES[array.dtype]
    shape = array.shape if index is None else array.shape[1:]
    start = 0 if index is None else index * math.prod(shape) * dtype.itemsize
    want = math.prod(shape) * dtype.itemsize
    runs, at = [], 0
    for offset, size in array.pieces:
        lo, hi = max(start, at), min(start + want, at + size)
        if lo < hi:
            runs.append((offset + lo - at, hi - lo))
        at += size
    if len(runs) == 1:  # one read straight into the result
        raw = file.read(*runs[0], what)
    else:
        raw, done = np.empty(want, np.uint8), 0
        for offset, size in runs:
            raw[done : done + size] = file.read(offset, size, what)
            done += size
    return raw.view(dtype).reshape(shape)
