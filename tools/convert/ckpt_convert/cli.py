"""``ckpt-convert SOURCE ...``: one subcommand per source, registered in ``SOURCES``.

A source module exposes ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``; it raises
``CheckpointError`` for anything the user can fix. This module turns those into one ``error:`` line on
stderr and exit code 1 (130 when interrupted), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ckptfmt import CheckpointError

# subcommand -> module implementing it
SOURCES: dict[str, str] = {
    "hf": "ckpt_convert.hf",
    "nemo": "ckpt_convert.nemo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckpt-convert", description="Convert model weights into a TensorRT-LLM compatible checkpoint."
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, module_name in SOURCES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(args.run, args)


def run_reporting_errors(run, args: argparse.Namespace) -> int:
    """Call ``run(args)``; expected failures become one ``error:`` line."""
    try:
        return run(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(
            f"error: interrupted; nothing written to {getattr(args, 'output_dir', 'the output directory')}",
            file=sys.stderr,
        )
        return 130
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
    except OSError as err:  # disk full, permissions, ...
        where = err.filename or f"writing {getattr(args, 'output_dir', 'the output')}"
        print(f"error: {where}: {err.strerror or err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
