"""A rank file writer that writes, hashes and syncs in background threads (used by the converters).

``RankFileWriter`` writes and sha256-hashes each tensor synchronously and fsyncs on close. Here
writing and hashing each run in their own thread per file behind short queues, so a conversion overlaps
them with each other, with reading the next tensor and with the other ranks' files (all release the
GIL). The write thread also syncs every ``SYNC_EVERY`` bytes, so the disk writes while the conversion
goes on instead of all at the final fsync. File format, order checks and digest are the base class's.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import numpy as np

from .io import RankFileWriter

QUEUED_CHUNKS = 2  # bounds the memory held by pending writes
SYNC_EVERY = 256 << 20  # bytes written between two fdatasync calls


class BackgroundRankFileWriter(RankFileWriter):
    """``RankFileWriter`` whose writes (+ periodic syncs) and sha256 run in two background threads.

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
        if self._error is None and job == self._write:
            try:
                self._sync()
            except OSError as err:
                self._error = err

    def _write(self, data) -> None:
        self._file.write(data)
        self._size += len(data)
        self._unsynced = getattr(self, "_unsynced", 0) + len(data)
        if self._unsynced >= SYNC_EVERY:
            self._sync()

    def _digest(self, data) -> None:
        self._hash.update(data)

    def _sync(self) -> None:
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self._unsynced = 0

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
        return super().close()  # checks the tensor count; its fsync finds little left to do

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._join()
            self._file.close()
