"""SIGKILL of ``ckpt-build --workers 2`` (the OOM killer, ``kill -9``): no worker goes on building, the output is
absent or valid, and the next run on the same output succeeds and reclaims what the killed run left beside it.

The kills are those of ``bench/fault_injection_build.py`` (20 random moments there, 2 here).
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.trt
pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install 'ckpt-build[rtx]')")
pytest.importorskip("psutil")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fault_injection_build.py"


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("fault_injection_build", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_sigkill_while_workers_build_ends_them_and_the_next_run_reclaims(faults, tmp_path):
    """12 layers: TensorRT compiles the kernels in one step of several seconds, which workers orphaned by the kill
    used to finish (and then write their plans into a temp dir the next run was removing)."""
    ckpt = faults.make_checkpoint(tmp_path / "ckpt", layers=12)
    out = tmp_path / "engine"
    trial = faults.kill_build(ckpt, out, delay=0.5, overwrite=False, marker="Determining refit engines")
    assert trial.killed_at, "the build finished before the kill"
    assert trial.processes >= 3, trial  # ckpt-build, 2 workers (and multiprocessing's resource tracker)
    assert trial.survivors == [], f"still running {trial.gone_s:.1f} s after the kill: {trial.survivors}"
    assert trial.gone_s < 3
    assert trial.after_kill == "absent"
    assert any(".tmp-" in name for name in trial.beside), trial.beside  # the killed run's temp dir
    faults.rerun(ckpt, out, trial)
    assert trial.problems == []


def test_sigkill_at_random_moments(faults, tmp_path):
    """A fresh build and an --overwrite build, each killed at a random moment of a measured build."""
    ckpt = faults.make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "engine"
    duration = faults.measure(ckpt, out)
    rng = random.Random(1)
    delays = [rng.uniform(0.3, 0.9) * duration for _ in range(2)]  # mostly while the workers exist
    trials = faults.run_trials(ckpt, out, delays, report=lambda _: None)
    assert [t.problems for t in trials] == [[], []], [faults._row(i, t) for i, t in enumerate(trials)]


def test_a_worker_killed_mid_build_fails_the_build_in_one_line(faults, tmp_path):
    """The OOM killer takes one worker: the build used to wait for its rank forever (multiprocessing.Pool)."""
    import psutil

    ckpt = faults.make_checkpoint(tmp_path / "ckpt", layers=12)
    out = tmp_path / "engine"
    proc = subprocess.Popen(faults.command(ckpt, out, False), stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Determining refit engines" in line:
                break
        workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, "".join(lines)
        workers[0].kill()
        killed = time.monotonic()
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.append(proc.stderr.read()), daemon=True)
        reader.start()
        reader.join(30)  # the build used to hang here
        err = "".join(rest)
        assert proc.wait(timeout=1) == 1, err
        assert time.monotonic() - killed < 5
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            p.kill()
        if proc.poll() is None:
            proc.kill()
    last = err.strip().splitlines()[-1]
    assert "a worker process died before finishing (killed: out of memory? use fewer --workers)" in last, err
    assert last.startswith("ckpt-build: error: rank") and "Traceback" not in err, err
    assert faults.wait_gone(workers, timeout=5) == []
    assert not out.exists() and faults.beside(out) == []
