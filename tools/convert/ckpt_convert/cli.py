"""``ckpt-convert SOURCE ...``: one subcommand per source, registered in ``SOURCES``.

A source module exposes ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``; it raises
``CheckpointError`` for anything the user can fix. This module turns those into one ``error:`` line on
stderr and exit code 1, never a traceback; Ctrl-C and SIGTERM end the run through ``ckptfmt.entry.run_main``
(exit 130 / 143, one line) after the temp and work directories are removed.

Before ``run_main`` holds the signals, only the standard library is imported. Nothing heavy is imported up front:
``build_parser`` imports only the named source's module, and each source imports numpy (ml_dtypes, torch) when it
needs them, with SIGINT and SIGTERM held (``ckptfmt.entry.import_holding_signals``: a signal is delivered once the
import is done), so a Ctrl-C during any import also ends in one line. ``ckpt-convert hf`` parses its command line
without numpy (``tests/convert/test_startup.py``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
from collections.abc import Sequence

PROG = "ckpt-convert"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# subcommand -> module implementing it
SOURCES: dict[str, str] = {
    "hf": "ckpt_convert.hf",
    "nemo": "ckpt_convert.nemo",
    "deepspeed": "ckpt_convert.deepspeed_convert",
    "jax": "ckpt_convert.jax_convert",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every source; only the named one's when ``argv`` starts with a source (start-up time:
    each source module imports its own dependencies)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert model weights into a TensorRT-LLM compatible checkpoint."
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    from ckptfmt.entry import import_holding_signals

    named = [argv[0]] if argv and argv[0] in SOURCES else list(SOURCES)
    for name in named:
        module_name = SOURCES[name]
        import_holding_signals((module_name,))  # a source module may import numpy: a Ctrl-C then is held
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # held until run_main's handlers are in place
    try:
        from ckptfmt.entry import run_main
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        raise
    return run_main(_main, argv, prog=PROG, held=())  # each source imports numpy & co. when it needs them


def _main(argv: list[str] | None) -> int:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a signal held during the imports is raised here
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    return run_reporting_errors(args.run, args)


def run_reporting_errors(run, args: argparse.Namespace) -> int:
    """Call ``run(args)``; expected failures become one ``error:`` line (interrupts go on to ``run_main``)."""
    from concurrent.futures.process import BrokenProcessPool

    from ckptfmt import CheckpointError

    try:
        return run(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
    except BrokenProcessPool:
        print("error: a worker process died (killed for memory? try fewer --workers)", file=sys.stderr)
    except OSError as err:  # disk full, permissions, ...
        output = getattr(args, "output_dir", None) or "the output"
        if err.errno in OUTPUT_ERRNOS:  # whichever file the OS named, it is the output that could not be written
            print(f"error: writing {output}: {err.strerror} ({OUTPUT_ADVICE})", file=sys.stderr)
        else:
            print(f"error: {err.filename or f'writing {output}'}: {err.strerror or err}", file=sys.stderr)
    return 1


OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
OUTPUT_ADVICE = "free space on the output's disk or choose another --output_dir"


if __name__ == "__main__":
    sys.exit(main())
