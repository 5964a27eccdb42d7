"""Fixtures for builder tests: tiny checkpoints and a CLI runner that captures the one-line errors."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


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


def run_watching_rss(cmd: list[str], period: float = 0.05) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd``; returns (the completed process, its peak RSS in bytes: VmHWM read from /proc while it runs)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status, peak = Path(f"/proc/{proc.pid}/status"), 0
    while proc.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(period)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), peak


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(HF model, directory) of a random tiny LLaMA with GQA."""
    from hf_llama import make_llama

    path = tmp_path_factory.mktemp("hf") / "llama"
    model = make_llama(path)
    model.generation_config.eos_token_id = None
    return model, path
