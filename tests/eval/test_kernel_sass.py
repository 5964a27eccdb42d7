"""bench/kernel_sass.py, shortened: the fused step's GEMVs compiled for an H100 (sm90) on this machine, their
machine code counted. Guards what the FP8 step's layout was made for (no spills, 16-byte weight loads, fewer
instructions a weight byte than the step before it) and the batched GEMV's vectorized input loads
(docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:  # found, not imported: this process may run the kernels interpreted
    pytest.skip("triton is not installed", allow_module_level=True)
ROOT = Path(__file__).resolve().parents[2]


def kernel_sass(tmp_path, *args: str) -> dict:
    """bench/kernel_sass.py's figures for ``args``, in a process of its own: other test modules set
    TRITON_INTERPRET, which turns the kernels into interpreted functions that nothing compiles."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = [ROOT / p for p in ("shared", "tools/eval", "tools/build", "tools/convert", "bench")]
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [ROOT, *paths])
    out = tmp_path / "sass.json"
    cmd = [sys.executable, str(ROOT / "bench" / "kernel_sass.py"), *args, "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())


def test_fp8_gemvs_spend_fewer_instructions_per_byte(tmp_path):
    figures = kernel_sass(tmp_path, "--shapes", "dense", "fc+gate", "--modes", "fp16", "fp8 before", "fp8")
    for name in ("dense", "fc+gate"):
        fp16, before, now = (figures[name][m] for m in ("fp16", "fp8 before", "fp8"))
        for r in (fp16, before, now):
            assert r["local (spills)"] == 0 and r["widest weight load"] == 16, r
            assert r["loop weight bytes"] > 0, r  # the weight-streaming loop was found
        assert now["per byte"] < 0.7 * before["per byte"], (name, now["per byte"], before["per byte"])
        assert fp16["per byte"] < now["per byte"], name  # codes still cost a conversion each


def test_batched_gemv_loads_whole_input_vectors(tmp_path):
    """At batch 8 (tensor cores, split-K) the weight loop reads its inputs in 16-byte pieces: a where over the
    column offsets once made them 2-byte loads (16 a step, docs/performance.md)."""
    figures = kernel_sass(tmp_path, "--batch", "8", "--shapes", "qkv", "dense", "--modes", "fp16")
    for name in ("qkv", "dense"):
        r = figures[name]["fp16"]
        assert r["loop weight bytes"] > 0 and r["loop narrow loads"] == 0, (name, r)
