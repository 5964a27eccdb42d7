"""A checkpoint whose bytes differ from its manifest's sha256 is refused (after the build, before publishing)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from checkpoints import layout_config, random_checkpoint
from conftest import run_cli

pytestmark = pytest.mark.trt
pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install 'ckpt-build[rtx]')")

LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm89"]


@pytest.fixture()
def flipped(tmp_path):
    """A tiny checkpoint with one byte of a tensor's data flipped in rank0.safetensors (header intact)."""
    ckpt = random_checkpoint(tmp_path / "ckpt", layout_config("llama-gqa"))
    path = ckpt / "rank0.safetensors"
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    start, _ = header["transformer.layers.0.mlp.fc.weight"]["data_offsets"]
    data[8 + header_len + start + 5] ^= 0x40
    path.write_bytes(bytes(data))
    return ckpt


def test_flipped_byte_is_refused(tmp_path, flipped):
    rc, _, err = run_cli("--checkpoint_dir", flipped, "--output_dir", tmp_path / "out", *LIMITS)
    lines = [line for line in err.splitlines() if line.startswith("ckpt-build: error:")]
    assert rc == 1 and len(lines) == 1, err
    assert "rank0.safetensors" in lines[0] and "sha256" in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_skip_checksum_builds_anyway(tmp_path, flipped):
    rc, _, err = run_cli("--checkpoint_dir", flipped, "--output_dir", tmp_path / "out", *LIMITS, "--skip_checksum")
    assert rc == 0, err
    assert (tmp_path / "out" / "rank0.engine").is_file()


def test_checkpoint_without_manifest_builds(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt", layout_config("llama-gqa"))
    (ckpt / "manifest.json").unlink()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", *LIMITS)
    assert rc == 0, err
