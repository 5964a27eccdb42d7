"""Early write-back of a file being written: the disk works while the file grows, not all at the final fsync.

A buffered ``write`` only fills the page cache; left alone, gigabytes of dirty pages pile up until the kernel's
dirty limits throttle the writer and the final fsync writes them all at once. ``WriteBack`` asks the kernel to
start writing each new range out as soon as it is written (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``) and
waits for the write-back of ranges ``behind`` bytes older, so dirty data stays bounded. It only schedules I/O:
durability still comes from the fsync the writer does when it closes the file. Where ``sync_file_range`` is
missing, it falls back to ``fdatasync`` every ``fallback_every`` bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4  # <linux/fs.h> SYNC_FILE_RANGE_*


def _sync_file_range():
    """libc's ``sync_file_range``, or None off Linux or where libc lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()


class WriteBack:
    """Write-back of one file descriptor's data as it is appended: call ``written(end)`` after each write."""

    def __init__(self, fd: int, kick: int = 8 << 20, behind: int = 64 << 20, fallback_every: int = 256 << 20):
        self.fd, self.kick, self.behind, self.fallback_every = fd, kick, behind, fallback_every
        self._started = 0  # write-back started for [0, _started)
        self._waited = 0  # write-back finished for [0, _waited)
        self._range = _SYNC_FILE_RANGE

    def written(self, end: int) -> None:
        """The file now holds ``end`` bytes (all of them already written to the page cache)."""
        if self._range is None:
            if end - self._started >= self.fallback_every:
                os.fdatasync(self.fd)
                self._started = self._waited = end
            return
        if end - self._started < self.kick:
            return
        self._call(self._started, end - self._started, WRITE)
        self._started = end
        if (old := end - self.behind) > self._waited:
            self._call(self._waited, old - self._waited, WAIT_BEFORE | WRITE | WAIT_AFTER)
            self._waited = old

    def _call(self, offset: int, length: int, flags: int) -> None:
        assert self._range is not None
        if self._range(self.fd, offset, length, flags) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this filesystem cannot; the fsync will do
                self._range = None
                return
            raise OSError(err, os.strerror(err))
