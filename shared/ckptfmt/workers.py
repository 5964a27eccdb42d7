"""Worker processes (``--workers N`` of the converter and the builder) that die with the tool that started them.

A parent killed by SIGKILL (the OOM killer, ``kill -9``) runs no cleanup, so the kernel must end its workers:
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set by the pool's initializer. Where prctl is missing, workers call
``exit_if_orphaned()`` between units of work. Standard library only: a new worker gets here before numpy,
torch or TensorRT load.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Executor

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT = 0  # in a worker: the pid of the tool that started it


def init_worker(parent: int) -> None:
    """Pool initializer: Ctrl-C is the parent's (it stops the pool), SIGTERM ends the worker at once, and the
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
    """End this worker at once when the process that started it is gone."""
    if _PARENT and os.getppid() != _PARENT:
        os._exit(1)


def stop_workers(pool: Executor | None) -> None:
    """Terminate this process's worker processes and wait until they are gone, so that none writes into a
    temporary directory while it is being removed."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(10)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
