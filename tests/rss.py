"""Peak RSS of a child process, read from /proc while it runs (its own VmHWM, not what it shared before exec)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def run_watching_rss(
    cmd: list[str], period: float = 0.05, timeout: float | None = None
) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd``; returns (the completed process, its peak RSS in bytes). Past ``timeout`` seconds the child is
    killed and ``TimeoutError`` raised."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status, peak = Path(f"/proc/{proc.pid}/status"), 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise TimeoutError(f"{cmd[0]} still running after {timeout} s")
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(period)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), peak
