"""``--workers N``: ranks built in worker processes that die with the ckpt-build that started them
(``ckptfmt.workers``: its initializer imports nothing heavy, so it runs before numpy and TensorRT load). The other
way round, a worker that dies fails the build at once (``run_in_workers``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from ckptfmt.errors import CheckpointError
from ckptfmt.workers import init_worker, stop_workers

T = TypeVar("T")


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
        stop_workers(pool)
        unfinished = [i for i, f in enumerate(futures) if not (f.done() and not f.cancelled() and not f.exception())]
        ranks = f"rank {unfinished[0]}" if len(unfinished) == 1 else f"ranks {', '.join(map(str, unfinished))}"
        raise CheckpointError(
            f"{ranks}: a worker process died before finishing (killed: out of memory? use fewer --workers)"
        ) from None
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown()
    return [f.result() for f in futures]
