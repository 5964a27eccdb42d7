"""Guards on the files a conversion reads: links may not leave the source, and sources may not change under us.

``check_inside`` refuses a file whose real path (links resolved) lies outside the source directory, so that a
tokenizer, config or weight file that is a link to ``/etc/shadow`` is never read or copied into the output. A
HuggingFace hub cache snapshot (``models--ORG--NAME/snapshots/REV/``) links every file to ``../../blobs/``:
that folder counts as part of the source.

``Fingerprint`` (size, mtime, inode) is taken when a file is opened and compared after its tensors are read and
again before the output is published: a file truncated, rewritten in place or replaced during the run is refused.
``GuardedFile`` reads with ``os.preadv`` into the process's own memory and checks the fingerprint after each read:
never a memory map, so a file truncated by someone else is an error line, not SIGBUS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError


def source_roots(source_dir: Path) -> tuple[Path, ...]:
    """The real directories a source directory's links may point into (itself; a hub cache's ``blobs/``)."""
    root = Path(source_dir).resolve()
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        return root, root.parent.parent / "blobs"
    return (root,)


def check_inside(path: Path, roots: tuple[Path, ...], what: str = "file") -> Path:
    """``path`` itself; a ``CheckpointError`` when links take it outside every one of ``roots``."""
    real = Path(path).resolve()
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise CheckpointError(
            f"{path}: {what} is a link to {real}, outside the source directory {roots[0]} "
            "(refused: links may not leave the source; copy the file into the directory instead)"
        )
    return Path(path)


@dataclass(frozen=True)
class Fingerprint:
    """What tells a file was changed: size, modification time (ns) and inode."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, stat: os.stat_result) -> Fingerprint:
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino)


def fingerprint(path: Path) -> Fingerprint:
    return Fingerprint.of(os.stat(path))


def check_unchanged(path: Path, before: Fingerprint) -> None:
    """A ``CheckpointError`` when ``path`` is no longer the file fingerprinted as ``before``."""
    try:
        now = fingerprint(path)
    except OSError:
        now = None
    if now != before:
        raise changed(path, before, now)


def changed(path: Path, before: Fingerprint, now: Fingerprint | None) -> CheckpointError:
    """The one-line error for a source that is no longer what it was (``now`` None: removed)."""
    return CheckpointError(f"{path}: {_what_changed(before, now)} during the conversion; {NOTHING_WRITTEN}")


NOTHING_WRITTEN = "nothing was written: convert again from a source that is not being modified"


def _what_changed(before: Fingerprint, now: Fingerprint | None) -> str:
    if now is None:
        return "removed"
    if now.inode != before.inode:
        return "replaced"
    if now.size < before.size:
        return f"truncated ({before.size} -> {now.size} bytes)"
    if now.size != before.size:
        return f"resized ({before.size} -> {now.size} bytes)"
    return "modified"


def check_all_unchanged(before: dict[Path, Fingerprint]) -> None:
    for path, fp in before.items():
        check_unchanged(path, fp)


class GuardedFile:
    """A source file open for exact ``pread``s; each read is followed by a check that the file is unchanged."""

    CHUNK = 1 << 30

    def __init__(self, path: Path, expected: Fingerprint | None = None):
        """``expected``: the file as first seen (opened again later): a change since is refused."""
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise changed(path, expected, None) if expected else CheckpointError(f"{path}: missing") from None
        except OSError as err:
            raise CheckpointError(f"{path}: cannot open ({err.strerror})") from None
        self.fingerprint = Fingerprint.of(os.fstat(self._fd))
        if expected is not None and expected != self.fingerprint:
            os.close(self._fd)
            raise changed(path, expected, self.fingerprint)
        self.size = self.fingerprint.size

    def read(self, offset: int, size: int, what: str) -> np.ndarray:
        """``size`` bytes at ``offset`` as a fresh uint8 array; ``what`` (e.g. ``tensor X``) is named in errors."""
        out = np.empty(size, np.uint8)
        view, done = out.data, 0
        while done < size:
            try:
                n = os.preadv(self._fd, [view[done : done + self.CHUNK]], offset + done)
            except OSError as err:
                raise CheckpointError(f"{self.path}: {what}: cannot read ({err.strerror})") from None
            if n == 0:
                check_unchanged(self.path, self.fingerprint)  # names how it changed
                raise CheckpointError(f"{self.path}: {what}: file ends early; {NOTHING_WRITTEN}")
            done += n
        check_unchanged(self.path, self.fingerprint)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> GuardedFile:
        return self

    def __exit__(self, *_) -> None:
        self.close()
