"""How every console script starts and stops: Ctrl-C, SIGTERM and a closed stdout end it in one line.

``run_main(main, argv, prog)`` is the body of each tool's ``main``: SIGINT exits 130, SIGTERM 143, a reader that
closed the pipe (``ckptfmt inspect DIR | head``) 141, none of them with a traceback. Interrupts raise
``KeyboardInterrupt`` where they land, so ``atomic_output_dir`` and worker pools unwind and clean up first.
``ckptfmt`` loads numpy lazily, so a tool whose CLI module imports only ``ckptfmt.entry``/``errors`` at the top
has its handlers in place before any heavy import; numpy itself is then imported with the signals held.

``deferred_interrupts()`` is for code that runs inside C/C++ callbacks (TensorRT's logger and progress monitor):
an exception raised there is swallowed by the library, so inside the block a signal only sets a flag that the
callback reads (to cancel the build) and that is raised once the block is left.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGPIPE = 128 + signal.SIGPIPE
HELD_IMPORTS = ("numpy", "ml_dtypes")  # every tool of ours needs them


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that remembers which signal caused it."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    """The signal handler of our tools: raise ``Interrupted`` where Python is, once (later signals are ignored)."""
    for s in (signal.SIGINT, signal.SIGTERM):  # the first signal wins: repeated Ctrl-C cannot cut the cleanup short
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


Main = Callable[[list[str] | None], int | None]


def run_main(
    main: Main | str, argv: list[str] | None = None, prog: str = "", held: tuple[str, ...] = HELD_IMPORTS
) -> int:
    """Run ``main(argv)`` and turn interrupts and a closed stdout into exit codes with one line each.

    ``held``: modules imported first with the signals held (``import_holding_signals``); a tool that imports them
    later, where it needs them, passes fewer and holds the signals there itself.

    ``main`` may be ``"package.module:function"``: the module is then imported with the signals held, so a
    console script whose CLI module imports numpy or torch at load time still ends a Ctrl-C in one line.
    """
    prog = prog or os.path.basename(sys.argv[0]) or "ckpt"
    previous = {}
    if _on_main_thread():
        previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = _resolve(main, held)(argv)
        sys.stdout.flush()
    except KeyboardInterrupt as err:
        # the process is on its way out: further signals stay ignored (restoring Python's handler would let a
        # second Ctrl-C during interpreter shutdown kill it with SIGINT instead of exit 130)
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"{prog}: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
        return EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_SIGPIPE
    for s, handler in previous.items():  # in-process callers (tests) get their handlers back
        signal.signal(s, handler)
    return int(code or 0)


def _resolve(main: Main | str, held: tuple[str, ...]) -> Main:
    """``main`` itself, or the function ``"module:function"`` names, its module imported with the signals held."""
    if not isinstance(main, str):
        import_holding_signals(held)
        return main
    module, name = main.split(":")
    import_holding_signals((*held, module))
    return getattr(importlib.import_module(module), name)


def import_holding_signals(modules: tuple[str, ...]) -> None:
    """Import C extensions that turn an interrupt in their initialisation into an ImportError (numpy does) with
    SIGINT/SIGTERM held; a signal that came meanwhile is delivered, and raised, once they are loaded."""
    if not _on_main_thread():
        return
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


class PendingSignal:
    """What ``deferred_interrupts`` hands out: the first signal that arrived inside the block, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def pending(self) -> bool:
        return self.signum is not None

    def raise_if_pending(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[PendingSignal]:
    """Inside the block SIGINT/SIGTERM only set ``flag.signum``; leaving the block raises it as KeyboardInterrupt.

    Off the main thread (where Python cannot set handlers) the block changes nothing and the flag stays clear.
    """
    flag = PendingSignal()
    if not _on_main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag._record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    flag.raise_if_pending()


def ckptfmt_console() -> int:
    """The ``ckptfmt`` console script (its CLI module, which loads numpy, imported with the signals held)."""
    return run_main("ckptfmt.cli:_main", prog="ckptfmt")
