"""``python -m ckpt_convert.hf ...``: the same as ``ckpt-convert hf ...``."""

import argparse
import sys

from ..cli import run_reporting_errors
from . import DESCRIPTION, add_arguments, run

parser = argparse.ArgumentParser(prog="python -m ckpt_convert.hf", description=DESCRIPTION)
add_arguments(parser)
sys.exit(run_reporting_errors(run, parser.parse_args()))
