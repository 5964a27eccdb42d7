"""Worker processes of ``--workers N`` die with the ckpt-build that started them.

A parent killed by SIGKILL (the OOM killer, ``kill -9``) runs no cleanup, so the kernel must end its workers:
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set in the pool's initializer. This module imports nothing heavy, so a new
worker gets there within its first fraction of a second, before the builder's modules (numpy, TensorRT) load.
Where prctl is missing, workers check ``os.getppid()`` before each rank instead. The other way round, a worker
that dies fails the build at once (``run_in_workers``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from ckptfmt.errors import CheckpointError

T = TypeVar("T")

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


def run_in_workers(fn: Callable[[tuple], T], jobs: list[tuple], workers: int) -> list[T]:
    """``[fn(job) for job in jobs]`` in ``workers`` spawned processes, in order.

    A worker that dies (the OOM killer, ``kill -9``) fails the run with one ``CheckpointError`` naming the jobs it
    left unfinished, instead of waiting for them forever; on any error or interrupt the workers are terminated
    (and gone) before this returns, so none writes into a temporary directory that is being removed.
    """
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(fn, job) for job in jobs]
        pending = set(futures)
        while pending:  # a timed wait keeps Ctrl-C deliverable; the first error is raised at once
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
    except BrokenProcessPool:
        _stop(pool)
        unfinished = [i for i, f in enumerate(futures) if not (f.done() and not f.cancelled() and not f.exception())]
        ranks = f"rank {unfinished[0]}" if len(unfinished) == 1 else f"ranks {', '.join(map(str, unfinished))}"
        raise CheckpointError(
            f"{ranks}: a worker process died before finishing (killed: out of memory? use fewer --workers)"
        ) from None
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    return [f.result() for f in futures]


def _stop(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's processes (SIGTERM ends a worker at once) and wait until they are gone."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(10)
    pool.shutdown(wait=False, cancel_futures=True)
