"""A rank file writer that writes, hashes and syncs in background threads (used by the converters).

``RankFileWriter`` writes and sha256-hashes each tensor synchronously and fsyncs on close. Here
writing and hashing each run in their own thread per file behind short queues, so a conversion overlaps
them with each other, with reading the next tensor and with the other ranks' files (all release the
GIL). The write thread writes with ``O_DIRECT`` through a staging buffer (``direct.DirectFile``: no
page-cache copy, the disk works while the conversion goes on); where the filesystem refuses that, it
writes buffered and starts the kernel's write-back of each piece at once (``writeback.WriteBack``). Either
way the file gets one fsync, in the write thread, when its last byte is written, so all the files of a
run sync in parallel. File format, order checks and digest are the base class's.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import numpy as np

from .direct import DirectFile, open_direct
from .io import RankFileWriter
from .writeback import WriteBack

QUEUED_CHUNKS = 2  # bounds the memory held by pending writes
WRITE_PIECE = 8 << 20  # bytes per write call: write-back starts after each piece


class BackgroundRankFileWriter(RankFileWriter):
    """``RankFileWriter`` whose writes (+ early write-back) and sha256 run in two background threads.

    Overrides the base class's one byte path, ``_emit``, and uses its ``_file``, ``_hash`` and ``_size``
    (same package: they change together).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        specs: dict[str, tuple[np.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self._error: BaseException | None = None
        self._finishing = False
        self._aborted = False  # the file will be removed: no need to sync it
        self._opened = False  # the write thread has chosen direct or buffered writes
        self._direct: DirectFile | None = None
        self._writeback: WriteBack | None = None
        self._queues: dict[Callable[[bytes], None], queue.Queue] = {
            job: queue.Queue(maxsize=QUEUED_CHUNKS) for job in (self._write, self._digest)
        }
        self._workers = [
            threading.Thread(target=self._drain, args=(job, q), name=f"{job.__name__} {path}", daemon=True)
            for job, q in self._queues.items()
        ]
        for worker in self._workers:
            worker.start()
        super().__init__(path, specs, metadata)

    def _emit(self, data) -> None:
        self._raise_pending()
        for q in self._queues.values():
            q.put(data)

    def _drain(self, job, pending: queue.Queue) -> None:
        while (data := pending.get()) is not None:
            if self._error is None:
                try:
                    job(data)
                except BaseException as err:  # re-raised in the caller's thread
                    self._error = err
        if job == self._write:
            self._end_writes()

    def _end_writes(self) -> None:
        """The file's one fsync (skipped when the file is abandoned), then its direct descriptor closed."""
        try:
            if self._error is None and not self._aborted:
                if self._direct is not None:
                    self._direct.finish()
                else:
                    os.fsync(self._file.fileno())
        except OSError as err:
            self._error = err
        finally:
            if self._direct is not None:
                self._direct.close()

    def _write(self, data) -> None:
        """Append ``data``: through the ``O_DIRECT`` staging buffer, else buffered in ``WRITE_PIECE`` pieces,
        each handed to the kernel's write-back at once."""
        if not self._opened:
            self._opened = True
            self._direct = open_direct(self.path)
            self._writeback = WriteBack(self._file.fileno())
        view = memoryview(data).cast("B")
        if self._direct is not None:
            self._direct.append(view)
            self._size += len(view)
            return
        assert self._writeback is not None
        for start in range(0, len(view), WRITE_PIECE):
            piece = view[start : start + WRITE_PIECE]
            self._file.write(piece)
            self._file.flush()
            self._size += len(piece)
            self._writeback.written(self._size)

    def _fsync(self) -> None:
        """Synced by the write thread when it drained (``_drain``), which ``close`` joined."""

    def _digest(self, data) -> None:
        self._hash.update(data)

    def finish(self) -> None:
        """Let the threads write, hash and sync what is queued, without waiting (``close`` waits)."""
        if not self._finishing:
            self._finishing = True
            for q in self._queues.values():
                q.put(None)

    def _join(self) -> None:
        self.finish()
        for worker in self._workers:
            worker.join()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> dict:
        self._join()
        self._raise_pending()
        return super().close()  # checks the tensor count

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._aborted = True
            self._join()
            self._file.close()
