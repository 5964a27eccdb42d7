"""Appending to a file with ``O_DIRECT``: bytes go from an aligned staging buffer straight to the disk.

A buffered write copies every byte into freshly allocated page-cache pages and leaves them dirty for the
kernel to write back later; for a multi-GB rank file that copy and the write-back cost more CPU than
hashing it. ``DirectFile`` copies the stream into one page-aligned staging buffer (reused, so warm) and writes
each full buffer with ``pwrite`` on an ``O_DIRECT`` descriptor: one user-space copy, no page cache, no dirty
pages. The last partial block is written padded and the file cut back to its true size. ``open_direct``
returns None where the platform or filesystem refuses ``O_DIRECT`` (tmpfs, some network filesystems): the
caller then writes buffered. Durability still needs the fsync of ``finish``.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

ALIGN = 4096  # offsets, lengths and addresses of O_DIRECT transfers (a multiple of any logical block size)
PIECE = 4 << 20  # staging buffer: bytes per write call (a typical largest single request of a disk)


class DirectFile:
    """An ``O_DIRECT`` descriptor of a file being written from offset 0, fed by ``append``."""

    def __init__(self, fd: int, piece: int = PIECE):
        assert piece % ALIGN == 0
        self.fd = fd
        self._staging = mmap.mmap(-1, piece)  # anonymous: page aligned
        self._view = memoryview(self._staging)
        self._fill = 0  # bytes staged
        self._offset = 0  # bytes written to the file

    def append(self, data: memoryview) -> None:
        """Stage ``data`` (1-D bytes); every full staging buffer goes to the disk."""
        done, piece = 0, len(self._view)
        while done < len(data):
            n = min(piece - self._fill, len(data) - done)
            self._view[self._fill : self._fill + n] = data[done : done + n]
            self._fill += n
            done += n
            if self._fill == piece:
                self._write(piece)

    def _write(self, length: int) -> None:
        written = 0
        while written < length:
            written += os.pwrite(self.fd, self._view[written:length], self._offset + written)
        self._offset += self._fill
        self._fill = 0

    def finish(self) -> int:
        """Write what is staged (padded to a block, then cut back), fsync; returns the file size."""
        if self._fill:
            size = self._offset + self._fill
            self._write(-(-self._fill // ALIGN) * ALIGN)
            os.ftruncate(self.fd, size)
            self._offset = size
        os.fsync(self.fd)
        return self._offset

    def close(self) -> None:
        """Close the descriptor; the staging buffer goes with its last reference (a traceback may hold a slice)."""
        os.close(self.fd)


def open_direct(path: Path, piece: int = PIECE) -> DirectFile | None:
    """A ``DirectFile`` on ``path`` (an empty file we created), or None where ``O_DIRECT`` is unavailable or
    refused: one aligned block is written (then cut off) to find out, so the refusal comes before any data."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | flag | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno == errno.EINVAL:
            return None
        raise
    direct = DirectFile(fd, piece)
    try:
        os.pwrite(fd, direct._view[:ALIGN], 0)  # the staging buffer starts zeroed
        os.ftruncate(fd, 0)
    except OSError as err:
        direct.close()
        if err.errno == errno.EINVAL:
            return None
        raise
    return direct
