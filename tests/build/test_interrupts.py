"""Ctrl-C and SIGTERM stop a real ckpt-build promptly: exit 130/143, one line, nothing left behind.

TensorRT swallows exceptions raised in its callbacks, so before ckpt-build cancelled through its progress
monitor, a Ctrl-C that landed in the logger was lost and the build finished with exit 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoints import layout_config, random_checkpoint

pytestmark = pytest.mark.trt
pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install 'ckpt-build[rtx]')")
psutil = pytest.importorskip("psutil")

LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm86,sm89"]
CKPT_BUILD = [sys.executable, "-c", "import sys; from ckpt_build.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "tp1": random_checkpoint(root / "tp1", layout_config("llama-gqa")),
        "tp2": random_checkpoint(root / "tp2", layout_config("llama-gqa", tp=2)),
        # 16 layers: TensorRT-RTX compiles the kernels in ONE step of ~13 s here ("Determining refit engines")
        "long_step": random_checkpoint(root / "long_step", layout_config("llama-gqa", num_hidden_layers=16)),
    }


def start(ckpt: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [*CKPT_BUILD, "--checkpoint_dir", str(ckpt), "--output_dir", str(out), *LIMITS, *extra]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, sig: int, marker: str, delay: float = 0.0) -> tuple[list[str], float]:
    """Send ``sig`` ``delay`` s after stderr shows ``marker``; returns (stderr lines, seconds from it to the exit)."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            time.sleep(delay)
            sent = time.monotonic()
            proc.send_signal(sig)
            break
    else:
        pytest.fail("the build ended before it started:\n" + "".join(lines))
    lines += proc.stderr.read().splitlines(keepends=True)
    proc.wait(timeout=60)
    return lines, time.monotonic() - sent


def assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_the_tensorrt_build_stops_it(tmp_path, ckpts, sig, code, word):
    out = tmp_path / "engine"
    proc = start(ckpts["tp1"], out)
    lines, seconds = signal_when(proc, sig, "rank 0: Building engine")
    err = "".join(lines)
    assert proc.returncode == code, err
    assert lines[-1] == f"ckpt-build: {word}\n", err
    assert seconds < 5, f"exit {seconds:.1f} s after the signal"
    assert "Traceback" not in err and "BuildCanceled" not in err
    assert_nothing_left(out)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_inside_a_long_tensorrt_step_does_not_wait_for_it(tmp_path, ckpts, sig, code):
    """TensorRT checks for cancellation only between steps; one step can last many seconds (22 s for a 135M
    model here). Ctrl-C gives it GRACE seconds, SIGTERM none; then the build thread is left behind."""
    from ckpt_build.interrupts import GRACE

    out = tmp_path / "engine"
    proc = start(ckpts["long_step"], out)
    lines, seconds = signal_when(proc, sig, "Determining refit engines", delay=1.0)
    err = "".join(lines)
    assert proc.returncode == code, err
    assert seconds < (GRACE if sig == signal.SIGINT else 0) + 1.5, f"exit {seconds:.1f} s after the signal"
    assert "Traceback" not in err and "Segmentation" not in err
    assert_nothing_left(out)


def test_ctrl_c_stops_every_worker_process(tmp_path, ckpts):
    out = tmp_path / "engine"
    proc = start(ckpts["tp2"], out, "--workers", "2")
    parent = psutil.Process(proc.pid)
    lines = []
    for line in proc.stderr:  # a worker is building: its progress line came through
        lines.append(line)
        if "Building engine" in line:
            break
    workers = [p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2, "".join(lines)
    proc.send_signal(signal.SIGINT)
    lines += proc.stderr.read().splitlines(keepends=True)
    assert proc.wait(timeout=30) == 130, "".join(lines)
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"worker processes still running: {[p.pid for p in alive]}"
    assert "Traceback" not in "".join(lines)
    assert_nothing_left(out)


def test_ctrl_c_while_importing_gives_one_line(tmp_path, ckpts):
    """SIGINT as soon as numpy is being mapped into the process (imports under way): no traceback."""
    out = tmp_path / "engine"
    proc = start(ckpts["tp1"], out)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "numpy" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "ckpt-build: interrupted", err
    assert_nothing_left(out)


def test_progress_lines_and_quiet(tmp_path, ckpts):
    proc = subprocess.run(
        [*CKPT_BUILD, "--checkpoint_dir", ckpts["tp1"], "--output_dir", tmp_path / "a", *LIMITS],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any("rank 0: Building engine > Building engine from subgraph" in line for line in lines), proc.stderr
    assert len(lines) < 40, proc.stderr  # a sane rate: phases, not every step
    quiet = subprocess.run(
        [
            *CKPT_BUILD,
            "--checkpoint_dir",
            ckpts["tp1"],
            "--output_dir",
            tmp_path / "b",
            *LIMITS,
            "--log_level",
            "warning",
        ],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert os.path.isdir(tmp_path / "b")
