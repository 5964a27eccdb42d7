"""A source file changed while it is converted: truncated (a memory-mapped read would die of SIGBUS) or rewritten
in place with the same size. Either is one line naming the file, exit 1, nothing published, no temp dir left."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from tests.reliability.helpers import assert_failed_cleanly, kill_tree, start, wait_for


def _started(model, out, workers: int):
    proc = start("hf", "--model_dir", model, "--output_dir", out, "--tp_size", "2", "--workers", str(workers))
    wait_for(lambda: list(out.parent.glob(f".{out.name}.tmp-*/rank*.safetensors")), proc)
    return proc


def _finish(proc) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        kill_tree(proc)
    return proc.returncode, err


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_mid_conversion(slow_model, tmp_path, workers):
    weights, out = slow_model / "model.safetensors", tmp_path / "out"
    header = 8 + struct.unpack("<Q", weights.read_bytes()[:8])[0]
    weights_size = weights.stat().st_size
    proc = _started(slow_model, out, workers)
    os.truncate(weights, header + 4096)  # the first few tensors stay readable
    rc, err = _finish(proc)
    assert_failed_cleanly(rc, err, out, str(weights), f"truncated ({weights_size} -> {header + 4096} bytes)")


def test_rewritten_in_place_mid_conversion(slow_model, tmp_path):
    """Same size, different bytes (a download resumed over it, an editor): the mtime says so."""
    weights, out = slow_model / "model.safetensors", tmp_path / "out"
    size = weights.stat().st_size
    proc = _started(slow_model, out, 1)
    with open(weights, "r+b") as f:
        f.seek(size - 4096)
        f.write(os.urandom(4096))  # the last tensor's tail: not read yet
    rc, err = _finish(proc)
    assert weights.stat().st_size == size
    assert_failed_cleanly(rc, err, out, str(weights), "modified during the conversion")


READ_THEN_TRUNCATE = """
import os, sys
from pathlib import Path
from ckpt_convert.hf.files import open_hf_source
model = Path(sys.argv[1])
with open_hf_source(model) as source:
    array = source.load("lm_head.weight")
    os.truncate(model / "model.safetensors", 0)
    print(float(abs(array).sum()) > 0)
"""


def test_a_tensor_read_stays_readable_after_truncation(model):
    """What the source returns is the process's own memory: a mapped page of a file truncated meanwhile would be
    SIGBUS (the process dies without a word) when the tensor is used."""
    proc = subprocess.run(
        [sys.executable, "-c", READ_THEN_TRUNCATE, str(model)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout == "True\n", (proc.returncode, proc.stderr)
