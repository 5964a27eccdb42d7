"""Peak memory of the streaming rank-file writer while writing a large rank file.

    python bench/ckptfmt_writer.py [--gb 2] [--dir /tmp]

Writes a ~N GB safetensors file of 64 MB fp16 tensors, each produced just before it is written (as a
converter does), and prints wall time, throughput and peak RSS (target: under 300 MB for 2 GB).
Then reads it back tensor by tensor through the mmap reader and checks every tensor.
"""

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ckptfmt import RankFileReader, RankFileWriter


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--tensor-mb", type=int, default=64)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    rows = args.tensor_mb * 1024 * 1024 // (4096 * 2)
    count = max(1, int(args.gb * 1024 / args.tensor_mb))
    specs = {f"transformer.layers.{i}.mlp.fc.weight": (np.float16, (rows, 4096)) for i in range(count)}
    work = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        start_rss = peak_rss_mb()
        t0 = time.perf_counter()
        writer = RankFileWriter(work / "rank0.safetensors", specs)
        for i, name in enumerate(specs):
            writer.write(name, np.full((rows, 4096), i % 100, dtype=np.float16))
        entry = writer.close()
        dt = time.perf_counter() - t0
        size_gb = entry["size"] / 1e9
        print(f"wrote {size_gb:.2f} GB in {count} tensors: {dt:.1f} s ({size_gb / dt:.2f} GB/s incl. sha256 + fsync)")
        print(f"peak RSS while writing: {peak_rss_mb():.0f} MB (before: {start_rss:.0f} MB; target < 300 MB)")
        t0 = time.perf_counter()
        reader = RankFileReader(work / "rank0.safetensors")
        for i, name in enumerate(specs):
            assert reader[name][-1, -1] == i % 100
        reader.close()
        print(
            f"read back lazily in {time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_mb():.0f} MB "
            "(mapped pages count while touched)"
        )
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
