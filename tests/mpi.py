"""Launching test commands under ``mpirun`` (Open MPI), shared by the multi-process tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = shutil.which("mpirun")


def mpirun(*args: str, n: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``mpirun -n N args`` (``args`` may hold ``:`` for one command per rank) from the repository root, with
    the tests importable, one thread per rank and a 60 s collective timeout."""
    root_flag = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CKPT_EVAL_TIMEOUT_S": "60"}
    return subprocess.run(
        [MPIRUN, *root_flag, "--oversubscribe", "-n", str(n), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
