"""``python -m ckpt_convert.hf ...``: the same as ``ckpt-convert hf ...``."""

import argparse
import sys

from ckptfmt.entry import run_main

PROG = "python -m ckpt_convert.hf"


def _main(argv: list[str] | None) -> int:
    from ..cli import run_reporting_errors
    from . import DESCRIPTION, add_arguments, run

    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_arguments(parser)
    return run_reporting_errors(run, parser.parse_args(argv))


sys.exit(run_main(_main, None, prog=PROG, held=()))  # the hf source imports numpy itself, signals held
