"""``ckpt-convert SOURCE ...``: one subcommand per source, registered in ``SOURCES``.

A source module exposes ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``; it raises
``CheckpointError`` for anything the user can fix. This module turns those into one ``error:`` line on
stderr and exit code 1, never a traceback; Ctrl-C and SIGTERM end the run through ``ckptfmt.entry.run_main``
(exit 130 / 143, one line) after the temp and work directories are removed.

Only the standard library and ``ckptfmt.entry`` are imported before ``run_main`` takes over the signals; the
sources (numpy, and torch where they need it) are imported inside.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ckptfmt.entry import run_main

PROG = "ckpt-convert"
# subcommand -> module implementing it
SOURCES: dict[str, str] = {
    "hf": "ckpt_convert.hf",
    "nemo": "ckpt_convert.nemo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert model weights into a TensorRT-LLM compatible checkpoint."
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, module_name in SOURCES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, prog=PROG)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
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
        where = err.filename or f"writing {getattr(args, 'output_dir', 'the output')}"
        print(f"error: {where}: {err.strerror or err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
