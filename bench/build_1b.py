"""Build time and peak RSS of ckpt-build for a ~1B-parameter LLaMA-shaped checkpoint (random fp16, TensorRT-RTX, CPU).

    python bench/build_1b.py [--workdir DIR] [--keep]    # --keep: leave DIR (its checkpoint is reused next time)

Writes the checkpoint with ckptfmt's streaming writer (one tensor in memory at a time), then runs
``ckpt-build`` in a child process and reads its peak RSS (VmHWM) from /proc while it runs. Target: peak RSS
<= 1.5x the engine file size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ckptfmt.config import CheckpointConfig
from ckptfmt.constants import CONFIG_FILE
from ckptfmt.io import RankFileWriter, atomic_output_dir, write_manifest
from ckptfmt.names import expected_tensors

# TinyLlama-1.1B shape
SHAPE = {
    "architecture": "LlamaForCausalLM",
    "dtype": "float16",
    "vocab_size": 32000,
    "hidden_size": 2048,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "intermediate_size": 5632,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "position_embedding_type": "rope_gpt_neox",
    "rotary_base": 10000.0,
    "norm_epsilon": 1e-5,
}


def write_random_checkpoint(path: Path) -> tuple[int, int]:
    """(parameters, bytes) of a random fp16 checkpoint written tensor by tensor."""
    config = CheckpointConfig.from_dict(SHAPE).check()
    specs = expected_tensors(config, 0)
    rng = np.random.default_rng(0)
    params = 0
    with atomic_output_dir(path, overwrite=True) as tmp:
        writer = RankFileWriter(tmp / "rank0.safetensors", {n: (np.float16, s.shape) for n, s in specs.items()})
        for name, spec in specs.items():
            base = 1.0 if name.endswith("layernorm.weight") or name.startswith("transformer.ln_f") else 0.0
            a = (base + 0.02 * rng.standard_normal(spec.shape, dtype=np.float32)).astype(np.float16)
            writer.write(name, a)
            params += a.size
            del a
        entry = writer.close()
        config.save(tmp / CONFIG_FILE)
        write_manifest(tmp, {"rank0.safetensors": entry})
    return params, entry["size"]


def watch_rss(proc: subprocess.Popen, period: float = 0.05) -> tuple[int, int, int]:
    """(peak RSS, peak RssAnon, peak RssFile) in bytes of a running child, read from /proc until it exits.

    Peak RSS is the kernel's VmHWM of the child's own image (``ru_maxrss`` would also count the pages the
    child shared with this process between fork and exec)."""
    hwm = anon = mapped = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            hwm = max(hwm, int(fields["VmHWM"].split()[0]) * 1024)
            anon = max(anon, int(fields["RssAnon"].split()[0]) * 1024)
            mapped = max(mapped, int(fields["RssFile"].split()[0]) * 1024)
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(period)
    return hwm, anon, mapped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--target", default="sm89")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckpt-build-1b-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        if (work / "ckpt" / "manifest.json").exists():  # kept from an earlier --keep run
            print(f"checkpoint: reusing {work / 'ckpt'}")
        else:
            params, ckpt_bytes = write_random_checkpoint(work / "ckpt")
            print(
                f"checkpoint: {params / 1e9:.2f} B params, {ckpt_bytes / 1e9:.2f} GB, written in "
                f"{time.perf_counter() - t0:.0f} s"
            )
        cmd = [
            sys.executable,
            "-m",
            "ckpt_build.cli",
            "--checkpoint_dir",
            str(work / "ckpt"),
            "--output_dir",
            str(work / "engine"),
            "--max_batch_size",
            "8",
            "--max_input_len",
            "1024",
            "--max_output_len",
            "1024",
            "--target",
            args.target,
            "--overwrite",
            "--log_level",
            "warning",
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak, anon, mapped = watch_rss(proc)
        _, stderr = proc.communicate()
        seconds = time.perf_counter() - t0
        if proc.returncode:
            print(stderr, file=sys.stderr)
            return 1
        engine = (work / "engine" / "rank0.engine").stat().st_size
        print(
            f"build: {seconds:.1f} s   peak RSS: {peak / 1e9:.2f} GB   engine: {engine / 1e9:.2f} GB   "
            f"peak/engine: {peak / engine:.2f} (target <= 1.5)"
        )
        print(
            f"sampled peaks: anonymous {anon / 1e9:.2f} GB (TensorRT's working copy + ours), "
            f"file-backed {mapped / 1e9:.2f} GB (mapped checkpoint pages, libraries)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
