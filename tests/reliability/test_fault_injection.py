"""bench/fault_injection.py, shortened: SIGKILL at 3 random moments of a 2-worker conversion, each recovered from."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fault_injection.py"


def test_three_random_sigkills(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    kills = bench.run(n=3, layers=30, workers=2, seed=1, directory=str(tmp_path), rerun_workers=1)
    table = capsys.readouterr().out
    assert len(kills) == 3
    assert all(k.passed for k in kills), table
    assert list(tmp_path.iterdir()) == []
