"""A rank file writer that writes and hashes in a background thread.

``ckptfmt.RankFileWriter`` writes and sha256-hashes each tensor synchronously. Here the same work runs
in one thread per file behind a short queue, so a conversion overlaps hashing and writing with reading
the next tensor and with the other ranks' files (both release the GIL). The file format, order checks
and manifest digest are the base class's.
"""

from __future__ import annotations

import queue
import threading

from ckptfmt import RankFileWriter

_QUEUED_CHUNKS = 2  # bounds the memory held by pending writes


class BackgroundRankFileWriter(RankFileWriter):
    """``RankFileWriter`` with ``_emit`` (write + hash) moved to a background thread."""

    def __init__(self, path, specs, metadata=None):
        self._pending: queue.Queue = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._drain, name=f"write {path}", daemon=True)
        self._worker.start()
        super().__init__(path, specs, metadata)

    def _emit(self, data) -> None:
        self._raise_pending()
        self._pending.put(data)

    def _drain(self) -> None:
        while (data := self._pending.get()) is not None:
            if self._error is None:
                try:
                    RankFileWriter._emit(self, data)
                except BaseException as err:  # re-raised in the caller's thread
                    self._error = err

    def _finish(self) -> None:
        if self._worker.is_alive():
            self._pending.put(None)
            self._worker.join()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> dict:
        self._finish()
        self._raise_pending()
        return super().close()

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._finish()
            self._file.close()
