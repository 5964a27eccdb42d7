"""SIGKILL (the OOM killer, ``kill -9``) cannot be cleaned up after: the workers must die with the converter, and
the next run on the same --output_dir must succeed and reclaim what the killed run left (temp dir, extraction)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.reliability.helpers import (
    assert_all_gone,
    convert,
    descendants,
    kill_tree,
    leftovers,
    start,
    validate,
    wait_for,
)

NEMO1 = Path(__file__).resolve().parents[1] / "fixtures" / "nemo" / "llama_tp1.nemo"


def _kill_mid_run(argv: list, out: Path, workers: int = 2) -> list:
    """Start a --workers conversion, SIGKILL it once its workers write rank files; returns its processes."""
    proc = start(*argv, "--output_dir", out, "--tp_size", "2", "--workers", str(workers), output=False)
    processes = []
    try:
        wait_for(lambda: list(out.parent.glob(f".{out.name}.tmp-*/rank*.safetensors")), proc)
        wait_for(lambda: len(descendants(proc.pid)) >= (workers if workers > 1 else 0), proc)
        processes = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert_all_gone(processes, timeout=5)
        return processes
    finally:
        kill_tree(proc, processes)


def _rerun_succeeds(argv: list, out: Path) -> None:
    proc = convert(*argv, "--output_dir", out, "--tp_size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / "..").resolve().iterdir() if p.name.startswith(f".{out.name}")) == []
    valid = validate(out)
    assert valid.returncode == 0, valid.stdout + valid.stderr


def test_sigkill_hf_workers_die_and_next_run_reclaims(slow_model, tmp_path):
    out = tmp_path / "out"
    argv = ["hf", "--model_dir", slow_model]
    _kill_mid_run(argv, out)
    assert not out.exists()
    assert any(name.startswith(".out.tmp-") for name in leftovers(out)), "expected the killed run's temp dir"
    _rerun_succeeds(argv, out)


def test_sigkill_nemo_extraction_is_reclaimed(tmp_path):
    out = tmp_path / "out"
    argv = ["nemo", "--nemo_ckpt_path", NEMO1]
    _kill_mid_run(argv, out, workers=1)  # (workers importing torch cost seconds; the extraction is the point)
    assert any(name.startswith(".out.tmp-nemo-") for name in leftovers(out)), leftovers(out)
    _rerun_succeeds(argv, out)
