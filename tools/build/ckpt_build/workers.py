"""Worker processes of ``--workers N`` die with the ckpt-build that started them.

A parent killed by SIGKILL (the OOM killer, ``kill -9``) runs no cleanup, so the kernel must end its workers:
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set in the pool's initializer. This module imports nothing heavy, so a new
worker gets there within its first fraction of a second, before the builder's modules (numpy, TensorRT) load.
Where prctl is missing, workers check ``os.getppid()`` before each rank instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT = 0  # in a worker: the pid of the ckpt-build that started it


def init_worker(parent: int) -> None:
    """Pool initializer: Ctrl-C is the parent's (it terminates the pool; SIGTERM ends a worker at once), and the
    worker gets SIGKILL when its parent dies."""
    global _PARENT
    _PARENT = parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    exit_if_orphaned()  # the parent may have died before prctl took effect


def exit_if_orphaned() -> None:
    """End this worker at once when the ckpt-build that started it is gone."""
    if _PARENT and os.getppid() != _PARENT:
        os._exit(1)
