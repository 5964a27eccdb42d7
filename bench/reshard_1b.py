"""Time and peak RSS of ``ckptfmt reshard`` on a ~1B-parameter LLaMA-shaped checkpoint (random fp16, CPU).

    python bench/reshard_1b.py [--workdir DIR] [--keep]

tp 1 -> tp 2 x pp 2 -> tp 1, each in a child process whose peak RSS (VmHWM) is read from /proc while it runs.
Peers in the same run: ``cp -r`` of the same checkpoint (the I/O floor) and the largest single tensor (the
memory floor of a tensor-at-a-time rewrite). The round trip is checked byte-identical at the end.
"""

from __future__ import annotations

import argparse
import filecmp
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_1b import SHAPE, watch_rss, write_random_checkpoint  # noqa: E402

from ckptfmt.config import CheckpointConfig  # noqa: E402
from ckptfmt.names import expected_tensors  # noqa: E402

CKPTFMT = str(Path(sys.executable).with_name("ckptfmt"))


def timed(cmd: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of ``cmd`` run as a child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = watch_rss(proc)[0]
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.read()}")
    return time.monotonic() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reshard-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "ckpt"
    if not (src / "rank0.safetensors").exists():
        write_random_checkpoint(src)
    size = (src / "rank0.safetensors").stat().st_size
    config = CheckpointConfig.from_dict(SHAPE).check()
    largest = max(2 * math.prod(s.shape) for s in expected_tensors(config, 0).values())  # fp16
    try:
        cp_s, _ = timed(["cp", "-r", str(src), str(work / "copy")])
        there_s, there_rss = timed(
            [
                CKPTFMT,
                "reshard",
                str(src),
                "--tp_size",
                "2",
                "--pp_size",
                "2",
                "--output_dir",
                str(work / "tp2pp2"),
                "--overwrite",
            ]
        )
        back_s, back_rss = timed(
            [CKPTFMT, "reshard", str(work / "tp2pp2"), "--output_dir", str(work / "back"), "--overwrite"]
        )
        same = filecmp.cmp(src / "rank0.safetensors", work / "back" / "rank0.safetensors", shallow=False)
        print(f"checkpoint: {size / 1e9:.2f} GB, largest tensor {largest / 1e6:.0f} MB")
        print(f"cp -r:              {cp_s:6.1f} s")
        print(f"reshard 1x1 -> 2x2: {there_s:6.1f} s ({there_s / cp_s:.1f}x cp), peak RSS {there_rss / 1e6:.0f} MB")
        print(f"reshard 2x2 -> 1x1: {back_s:6.1f} s ({back_s / cp_s:.1f}x cp), peak RSS {back_rss / 1e6:.0f} MB")
        print(f"peak RSS / checkpoint: {max(there_rss, back_rss) / size:.2f}; round trip byte-identical: {same}")
    finally:
        for name in ("copy", "tp2pp2", "back"):
            shutil.rmtree(work / name, ignore_errors=True)
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
