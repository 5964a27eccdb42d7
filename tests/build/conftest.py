"""Fixtures for builder tests: tiny checkpoints and a CLI runner that captures the one-line errors."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tests.rss import run_watching_rss  # noqa: E402,F401  (the build tests import it from here)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``ckpt-build`` in-process; returns (exit code, stdout, stderr)."""
    from ckpt_build.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def plan_strings(path: Path) -> set[str]:
    """Printable ASCII runs of >= 6 characters in a plan file: what ``strings -n 6`` prints (no binutils needed)."""
    return {m.decode() for m in re.findall(rb"[\x20-\x7e\t]{6,}", path.read_bytes())}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(HF model, directory) of a random tiny LLaMA with GQA."""
    from hf_llama import make_llama

    path = tmp_path_factory.mktemp("hf") / "llama"
    model = make_llama(path)
    model.generation_config.eos_token_id = None
    return model, path
