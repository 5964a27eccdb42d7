"""Run a TensorRT build so that Ctrl-C and SIGTERM are handled at once, not when TensorRT returns.

Python runs signal handlers on the main thread between bytecodes. A build on the main thread gives it none
for as long as TensorRT compiles (one step, "Determining refit engines", took 22 s for a 135M model on
2 cores), and an exception raised in TensorRT's callbacks is swallowed. So the build runs on a helper
thread while the main thread waits, and a signal lands on the main thread at once:

- SIGINT: the build is marked cancelled (the progress monitor stops TensorRT at its next step) and the
  interrupt is raised once TensorRT returned; everything unwinds as usual (temp dir removed).
- With ``stop_at_once`` (command-line tools), TensorRT gets ``GRACE`` seconds to reach its next step; after
  that, or at a second SIGINT or a SIGTERM, the interrupt is raised at once and the build thread is left
  running inside TensorRT; ``still_running()`` then tells the tool to end with ``os._exit`` after its
  cleanup, since the interpreter must not finalize under a thread that is still in TensorRT.
  (``ckptfmt.entry``'s handler ignores signals after the first so that cleanup runs to its end; while we
  only wait for TensorRT, a second one is listened to again, and ignored again once the wait is over.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ckptfmt.entry import Interrupted

log = logging.getLogger("ckpt_build")
T = TypeVar("T")
GRACE = 2.0  # seconds TensorRT gets to reach its next step after Ctrl-C when stopping at once is allowed
_LEFT_RUNNING: list[threading.Event] = []  # "done" events of build threads left running inside TensorRT


def run_cancellable(fn: Callable[[], T], cancel: threading.Event, label: str, stop_at_once: bool = False) -> T:
    """``fn()`` on a helper thread while this (main) thread waits; off the main thread, ``fn()`` itself."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    result: dict = {}
    done = threading.Event()  # not Thread.join: on Python 3.11 an interrupted join marks the thread stopped

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # handed to the waiting thread
            result["error"] = err
        finally:
            done.set()

    threading.Thread(target=target, name=f"build {label}", daemon=True).start()
    interrupt: KeyboardInterrupt | None = None
    deadline = float("inf")
    with contextlib.ExitStack() as listening:
        while not done.is_set():
            if time.monotonic() > deadline:  # TensorRT is inside a long step: do not wait for it
                _LEFT_RUNNING.append(done)
                assert interrupt is not None  # the deadline is set when an interrupt arrives
                raise interrupt
            try:
                done.wait(0.1)
            except KeyboardInterrupt as err:
                cancel.set()
                if stop_at_once and (interrupt is not None or getattr(err, "signum", signal.SIGINT) == signal.SIGTERM):
                    _LEFT_RUNNING.append(done)
                    raise
                if interrupt is None:
                    interrupt = err
                    log.info("%s: stopping the build at TensorRT's next step", label)
                    if stop_at_once:
                        deadline = time.monotonic() + GRACE
                        listening.enter_context(_listening())
    if interrupt is not None:
        raise interrupt
    if "error" in result:
        raise result["error"]
    return result["value"]


@contextlib.contextmanager
def _listening() -> Iterator[None]:
    """SIGINT/SIGTERM raise ``Interrupted`` inside the block; ignored after it (as after the first signal)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


def _raise(signum: int, _frame) -> None:
    raise Interrupted(signum)


def still_running() -> bool:
    """A build thread left running by ``stop_at_once`` is still inside TensorRT."""
    return any(not done.is_set() for done in _LEFT_RUNNING)


def exit_code(code: int) -> int:
    """``code``, or, when an interrupt left TensorRT running on its thread, exit now with it: the interpreter
    must not finalize under TensorRT."""
    if still_running():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
