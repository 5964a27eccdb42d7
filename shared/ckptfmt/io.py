"""Rank files: a streaming safetensors writer, a lazy mmap reader, atomic output dirs, the manifest.

The writer takes every tensor's dtype and shape up front, writes the header, then the tensors one at a
time in that order, hashing as it goes: memory stays at one tensor and the manifest needs no re-read.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import signal
import struct
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .constants import CONFIG_FILE, MANIFEST_FILE, RANK_FILE, SAFETENSORS_DTYPES, SAFETENSORS_TAGS
from .entry import raise_interrupted
from .errors import CheckpointError
from .jsonfile import MAX_JSON_BYTES as MAX_JSON_BYTES  # re-exported: read_json_file lives in jsonfile
from .jsonfile import read_json_file

_ALIGN = 8
_MAX_HEADER = 100 * 1024 * 1024


def to_numpy(t) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU) torch tensor, bf16 included, without importing torch."""
    if isinstance(t, np.ndarray):
        return t
    if type(t).__module__.startswith("torch"):
        torch = sys.modules["torch"]
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        if t.dtype == torch.float8_e4m3fn:
            import ml_dtypes

            return t.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
        return t.numpy()
    return np.asarray(t)


def _bytes_view(a: np.ndarray) -> memoryview:
    a = np.ascontiguousarray(a)
    return memoryview(a.reshape(-1).view(np.uint8).data)


class RankFileWriter:
    """Streams one safetensors file: ``specs`` fixes names, dtypes, shapes and order up front."""

    def __init__(
        self,
        path: str | os.PathLike,
        specs: dict[str, tuple[np.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self._order = list(specs)
        self._specs = {n: (np.dtype(d), tuple(int(x) for x in s)) for n, (d, s) in specs.items()}
        header: dict = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for name in self._order:
            dtype, shape = self._specs[name]
            if dtype not in SAFETENSORS_TAGS:
                raise CheckpointError(f"{self.path.name}: tensor {name}: dtype {dtype} not storable")
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {
                "dtype": SAFETENSORS_TAGS[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % _ALIGN)
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._hash = hashlib.sha256()
        self._size = 0
        self._next = 0
        self._emit(struct.pack("<Q", len(raw)) + raw)

    def _emit(self, data) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def write(self, name: str, tensor) -> None:
        """Write the next tensor (must come in the order of ``specs``, with its declared dtype/shape)."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise CheckpointError(f"{self.path.name}: tensor {name} written out of order (expected {expected})")
        a = to_numpy(tensor)
        dtype, shape = self._specs[name]
        if a.dtype != dtype or tuple(a.shape) != shape:
            raise CheckpointError(
                f"{self.path.name}: tensor {name}: got {a.dtype}{list(a.shape)}, declared {dtype}{list(shape)}"
            )
        self._emit(_bytes_view(a))
        self._next += 1

    def close(self) -> dict:
        """Finish the file; returns its manifest entry ``{"size", "sha256"}``."""
        if self._next != len(self._order):
            self._file.close()
            raise CheckpointError(
                f"{self.path.name}: closed after {self._next} of {len(self._order)} tensors "
                f"(missing {self._order[self._next]})"
            )
        self._file.flush()
        self._fsync()
        self._file.close()
        return {"size": self._size, "sha256": self._hash.hexdigest()}

    def _fsync(self) -> None:
        os.fsync(self._file.fileno())

    def __enter__(self) -> RankFileWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


class RankFileReader:
    """Lazy, memory-mapped safetensors reader: ``reader[name]`` maps one tensor (read-only, no copy)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries, self.metadata, self._data_start = _read_header(self.path)
        self._mm: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(self.entries)

    def spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        e = self.entries[name]
        return SAFETENSORS_DTYPES[e["dtype"]], tuple(e["shape"])

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.entries:
            raise CheckpointError(f"{self.path}: no tensor {name}")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        dtype, shape = self.spec(name)
        lo, hi = self.entries[name]["data_offsets"]
        raw = self._mm[self._data_start + lo : self._data_start + hi]
        return raw.view(dtype).reshape(shape)

    get = __getitem__

    def stacked(self, names: list[str]) -> np.ndarray | None:
        """The tensors ``names`` concatenated on dim 0 as ONE view of the file, or None unless they are stored
        back to back in this order with the same dtype and trailing shape (no copy either way)."""
        if not names or any(n not in self.entries for n in names):
            return None
        specs = [self.spec(n) for n in names]
        dtype, shape = specs[0]
        if not shape or any(d != dtype or s[1:] != shape[1:] or not s for d, s in specs):
            return None
        offsets = [self.entries[n]["data_offsets"] for n in names]
        if any(prev[1] != nxt[0] for prev, nxt in zip(offsets, offsets[1:])):
            return None
        first = self[names[0]]  # maps the file
        assert self._mm is not None
        rows = sum(s[0] for _, s in specs)
        raw = self._mm[self._data_start + offsets[0][0] : self._data_start + offsets[-1][1]]
        return raw.view(first.dtype).reshape((rows, *shape[1:]))

    def release_pages(self) -> bool:
        """Drop the mapped pages from this process's memory (they fault back in from the file when read).

        Safe at any time since the mapping is read-only; returns False where the platform cannot do it.
        """
        mapping = getattr(self._mm, "_mmap", None)  # np.memmap's mmap.mmap
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if mapping is None or advice is None or not hasattr(mapping, "madvise"):
            return False
        mapping.madvise(advice)
        return True

    def close(self) -> None:
        self._mm = None

    def __enter__(self) -> RankFileReader:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _read_header(path: Path) -> tuple[dict, dict, int]:
    """Parse and check a safetensors header as strictly as safetensors itself does.

    The header is a JSON object of unique names; every entry has a known dtype, a shape of non-negative
    integers and integer offsets whose length is the shape's byte size; sorted by offset the tensors run
    contiguously from 0 (no hole, no overlap) and end exactly at the end of the file.
    """
    try:
        if not path.is_file():  # a FIFO or device would block or stream forever
            raise CheckpointError(f"{path}: missing" if not path.exists() else f"{path}: not a regular file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: corrupt safetensors header (length {n}, file {size} bytes)")
            raw = f.read(n)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    header = _parse_header_json(path, raw)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt header: __metadata__ must map strings to strings")
    spans = []
    for name, e in header.items():
        spans.append((*_entry_span(path, name, e), name))
    end = 0
    for lo, hi, name in sorted(spans):
        if lo != end:
            what = "overlaps the previous tensor" if lo < end else f"leaves a hole of {lo - end} bytes before it"
            raise CheckpointError(f"{path}: tensor {_shown(name)}: data_offsets [{lo}, {hi}] {what}")
        end = hi
    if 8 + n + end != size:
        detail = "truncated" if 8 + n + end > size else f"{size - 8 - n - end} bytes after the last tensor"
        raise CheckpointError(f"{path}: {detail} (header says {8 + n + end} bytes, file has {size})")
    return header, metadata, 8 + n


def _parse_header_json(path: Path, raw: bytes) -> dict:
    def unique(pairs: list) -> dict:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen = [k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])]
            raise CheckpointError(f"{path}: corrupt header: tensor {_shown(seen[0])} named twice")
        return out

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not UTF-8 JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header


def _is_index(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _entry_span(path: Path, name: str, e: object) -> tuple[int, int]:
    """(begin, end) of one header entry, after checking its dtype, shape and offsets."""
    if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
        raise CheckpointError(
            f"{path}: corrupt header entry for tensor {_shown(name)} (needs dtype, shape, data_offsets)"
        )
    dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {_shown(name)}: unknown dtype {json.dumps(dtype)}")
    if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
        raise CheckpointError(f"{path}: tensor {_shown(name)}: shape {json.dumps(shape)} is not a list of sizes >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_index(o) for o in offsets):
        raise CheckpointError(
            f"{path}: tensor {_shown(name)}: data_offsets {json.dumps(offsets)} are not two offsets >= 0"
        )
    lo, hi = offsets
    if hi < lo or hi - lo != math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize:
        raise CheckpointError(
            f"{path}: tensor {_shown(name)}: data_offsets {offsets} do not match shape {shape} ({dtype})"
        )
    return lo, hi


def _shown(name: str) -> str:
    """A tensor name fit for a one-line message: as is when printable, else JSON-quoted."""
    return name if name.isprintable() else json.dumps(name)


# ---- manifest -------------------------------------------------------------------------------------
def file_digest(path: str | os.PathLike, chunk: int = 16 << 20) -> dict:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def write_manifest(directory: str | os.PathLike, entries: dict[str, dict] | None = None) -> None:
    """Write ``manifest.json`` last: size + sha256 of every file (``entries`` reuses known digests)."""
    d = Path(directory)
    entries = dict(entries or {})
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and rel != MANIFEST_FILE and rel not in entries:
            entries[rel] = file_digest(p)
    (d / MANIFEST_FILE).write_text(json.dumps({"version": 1, "files": dict(sorted(entries.items()))}, indent=1) + "\n")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_manifest(directory: str | os.PathLike) -> dict[str, tuple[int, str]] | None:
    """``{relative path: (size, sha256)}`` from ``directory/manifest.json``; None when there is none.

    Every entry must name a file inside ``directory`` (no absolute path, no ``..``) with an integer size and a
    sha256 hex digest; anything else is one ``CheckpointError`` naming the manifest and the entry.
    """
    p = Path(directory) / MANIFEST_FILE
    if not p.exists() and not p.is_symlink():
        return None
    data = read_json_file(p)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{p}: corrupt manifest (no 'files' object)")
    out = {}
    for rel, e in files.items():
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or rel == MANIFEST_FILE:
            raise CheckpointError(f"{p}: corrupt manifest: entry {json.dumps(rel)} is not a file inside the directory")
        size, sha = (e.get("size"), e.get("sha256")) if isinstance(e, dict) else (None, None)
        if not isinstance(size, int) or not _is_index(size) or not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise CheckpointError(f"{p}: corrupt manifest: entry {json.dumps(rel)} needs a size and a sha256")
        out[rel] = (size, sha)
    return out


def verify_manifest(directory: str | os.PathLike, hash_files: bool = True) -> list[str]:
    """Problems of the manifest (missing files, size or checksum mismatch); [] when absent."""
    d = Path(directory)
    try:
        files = read_manifest(d)
    except CheckpointError as err:
        return [str(err)]
    problems = []
    for rel, (size, sha) in (files or {}).items():
        f = d / rel
        if f.is_symlink() or not f.is_file():
            problems.append(f"{f}: listed in {MANIFEST_FILE} but missing")
        elif f.stat().st_size != size:
            problems.append(f"{f}: size {f.stat().st_size} != manifest {size}")
        elif hash_files and file_digest(f)["sha256"] != sha:
            problems.append(f"{f}: sha256 checksum mismatch with {MANIFEST_FILE}")
    return problems


# ---- background checksums -------------------------------------------------------------------------
class BackgroundChecksums:
    """Hash the files that ``directory/manifest.json`` lists in background threads while a tool reads them.

    Missing files and size mismatches are raised at once; ``wait()`` raises the first sha256 mismatch. The
    hashing reads the same pages the tool maps, so it costs CPU on another core, not a second pass over the disk.
    Without a manifest there is nothing to check and ``wait()`` returns at once.
    """

    def __init__(self, directory: str | os.PathLike, workers: int = 2, skip: Iterable[str] = ()):
        """``skip``: manifest entries this reader does not read (a rank of a parallel run: the other ranks' files,
        which their own ranks hash); they are still checked to exist with their listed size."""
        self.directory = Path(directory)
        self._stop = threading.Event()
        self._problems: list[str] = []
        self._threads: list[threading.Thread] = []
        skipped = {self.directory / rel for rel in skip}
        pending = [(f, sha) for f, sha in self._listed_files() if f not in skipped]
        for i in range(min(workers, len(pending))):
            t = threading.Thread(target=self._hash_files, args=(pending[i::workers],), daemon=True, name="checksums")
            t.start()
            self._threads.append(t)

    def _listed_files(self) -> list[tuple[Path, str]]:
        pending = []
        for rel, (size, sha) in (read_manifest(self.directory) or {}).items():
            f = self.directory / rel
            if f.is_symlink() or not f.is_file():
                raise CheckpointError(f"{f}: listed in {MANIFEST_FILE} but missing")
            if f.stat().st_size != size:
                raise CheckpointError(f"{f}: size {f.stat().st_size} != {size} in {MANIFEST_FILE} (file changed)")
            pending.append((f, sha))
        return pending

    def _hash_files(self, files: list[tuple[Path, str]], chunk: int = 8 << 20) -> None:
        for path, expected in files:
            h = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    while not self._stop.is_set() and (block := f.read(chunk)):
                        h.update(block)
            except OSError as err:
                self._problems.append(f"{path}: cannot read ({err.strerror})")
                return
            if self._stop.is_set():
                return
            if h.hexdigest() != expected:
                self._problems.append(
                    f"{path}: sha256 checksum mismatch with {MANIFEST_FILE} (corrupt file; --skip_checksum ignores it)"
                )

    def wait(self) -> None:
        """Join the hashing; raise ``CheckpointError`` naming the first file that does not match."""
        for t in self._threads:
            while t.is_alive():  # a timed join keeps Ctrl-C deliverable
                t.join(0.2)
        if self._problems:
            raise CheckpointError(self._problems[0], self._problems)

    def cancel(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


# ---- atomic output directory ----------------------------------------------------------------------
def _is_ours(directory: Path) -> bool:
    """A directory this suite wrote: our manifest lists every file in it (or it is empty)."""
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir()}
    if not present:
        return True
    try:
        listed = read_manifest(directory)
    except CheckpointError:
        return False
    return listed is not None and present == set(listed) | {MANIFEST_FILE}


def check_output_dir(
    final: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> None:
    """Refuse an output directory whose replacement could destroy what the tool did not write.

    Refused: ``/``, the home directory, the current directory or one of its parents, an input, a directory
    holding an input or inside one, a symlink, a file, a mount point, and an existing directory unless it is
    empty or (with ``overwrite``) one of ours: its manifest lists exactly the files in it.
    """
    final = Path(final)
    name = str(final)
    if final.is_symlink():
        raise CheckpointError(f"{name}: output directory is a symbolic link; give the real path")
    target = final.resolve()
    if target == Path(target.anchor) or target == Path.home().resolve():
        raise CheckpointError(f"{name}: refusing to write the output to {target}; name a new directory")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise CheckpointError(f"{name}: refusing to replace the current directory or one of its parents")
    for src in inputs:
        src_path = Path(src).resolve()
        if target == src_path or target in src_path.parents:
            raise CheckpointError(f"{name}: output directory would replace the input {src}; name a new directory")
        if src_path in target.parents and src_path.is_dir():
            raise CheckpointError(f"{name}: output directory lies inside the input {src}; name a directory outside it")
    if not final.exists():
        return
    if not final.is_dir():
        raise CheckpointError(f"{name}: exists and is not a directory")
    if os.path.ismount(final):
        raise CheckpointError(f"{name}: is a mount point and cannot be replaced; write to a new directory inside it")
    if not any(final.iterdir()):
        return
    if not overwrite:
        raise CheckpointError(f"{name}: output directory already exists (pass --overwrite to replace it)")
    if not _is_ours(final):
        raise CheckpointError(
            f"{name}: --overwrite replaces only a checkpoint or engine directory written by these tools "
            f"(its {MANIFEST_FILE} lists every file); this one holds other files, so it is left alone"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_CLAIMED: set[Path] = set()  # outputs this process holds the lock of (claim_output)


@contextlib.contextmanager
def claim_output(
    final: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Hold ``final`` for this run: check it may be written, lock it, reclaim what killed runs left beside it.

    A tool whose work needs scratch space beside the output before ``atomic_output_dir`` starts (the NeMo
    converter's extraction) claims the output first and names its scratch ``.NAME.tmp-*``, so a later run
    reclaims it if this one is killed. ``atomic_output_dir`` claims by itself when the caller has not.
    """
    final = Path(final)
    inputs = list(inputs)
    check_output_dir(final, overwrite, inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    key = final.parent.resolve() / final.name
    with _output_lock(final):
        _reclaim_stale(final)
        check_output_dir(final, overwrite, inputs)
        _CLAIMED.add(key)
        try:
            yield final
        finally:
            _CLAIMED.discard(key)


@contextlib.contextmanager
def atomic_output_dir(
    final: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; renamed into place only when the block completes.

    ``check_output_dir`` decides whether ``final`` may be written (again just before the rename); the output is
    claimed (``claim_output``) for the whole block. On any error, Ctrl-C or SIGTERM the temp dir is removed and
    ``final`` is untouched. The published directory gets the umask's usual mode, not the temp dir's 0700.
    """
    final = Path(final)
    inputs = list(inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    claimed = final.parent.resolve() / final.name in _CLAIMED
    claim = contextlib.nullcontext() if claimed else claim_output(final, overwrite, inputs)
    with claim, _publish_when_done(final, overwrite, inputs) as tmp:
        yield tmp


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (rank files written by our writers are synced already)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            _fsync_path(path)
    _fsync_path(root)


@contextlib.contextmanager
def _output_lock(final: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``final`` exclusively, so two runs on one output cannot both publish."""
    lock = final.parent / f".{final.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise CheckpointError(
                f"{final}: cannot write beside it ({lock.name}: {err.strerror}); choose a writable --output_dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"{final}: another run is writing this output directory now (it holds {lock.name}); "
                "wait for it or choose another --output_dir"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # its holder removed it between our open and our lock: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _reclaim_stale(final: Path) -> None:
    """Remove what killed runs on ``final`` left beside it (we hold the lock, so none is running); an old
    output left only under ``.NAME.old-PID`` (killed between the two renames of --overwrite) is restored."""
    name = glob.escape(final.name)
    for stale in final.parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in sorted(final.parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if not final.exists() and old.is_dir() and _is_ours(old):
            old.rename(final)
            print(f"{final}: restored from {old.name}, left by an interrupted --overwrite", file=sys.stderr)
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _publish_when_done(final: Path, overwrite: bool, inputs: list) -> Iterator[Path]:
    """A temp dir beside ``final``, renamed into place when the block completes and removed when it fails."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield tmp
        check_output_dir(final, overwrite, inputs)  # the world may have changed while we worked
        tmp.chmod(0o777 & ~_umask())
        _sync_tree(tmp)  # a power loss after the rename must not publish truncated files
        if final.exists():
            trash = final.parent / f".{final.name}.old-{os.getpid()}"
            final.rename(trash)
            tmp.rename(final)
            _fsync_path(final.parent)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
            _fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def save_checkpoint(
    directory: str | os.PathLike,
    config,
    rank_tensors: dict[int, dict],
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a whole (small) checkpoint atomically: config, one rank file per rank, manifest last.

    Convenience for tests and small models; converters stream through ``RankFileWriter`` instead.
    """
    with atomic_output_dir(directory, overwrite=overwrite) as tmp:
        entries = {}
        for rank, tensors in sorted(rank_tensors.items()):
            arrays = {n: to_numpy(t) for n, t in tensors.items()}
            name = RANK_FILE.format(rank=rank)
            writer = RankFileWriter(tmp / name, {n: (a.dtype, a.shape) for n, a in arrays.items()}, metadata)
            for n, a in arrays.items():
                writer.write(n, a)
            entries[name] = writer.close()
        config.save(tmp / CONFIG_FILE)
        write_manifest(tmp, entries)
