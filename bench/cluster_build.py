"""tp 2 x pp 2 build as one ``ckpt-build`` vs a Slurm job array (one task per rank) + finalize, on this machine.

    python bench/cluster_build.py [--workdir DIR] [--keep] [--json FILE]   # as root, slurm-wlm + munge installed

A random fp16 TinyLlama-1.1B-shaped checkpoint at tp 2 x pp 2 (4 rank files, 2.2 GB) is built three ways:
``ckpt-build`` alone, ``ckpt-build --workers 2``, and ``cluster/slurm/submit.sh`` (array of 4 + finalize) on a
private one-node Slurm (tests/cluster/slurm_cluster.py). Prints wall times, each rank's build time and peak
RSS, and an estimate for a 70B model at tp 8 on 1 node vs 8 nodes scaled from the measured per-rank figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from build_1b import SHAPE, watch_rss  # noqa: E402

from ckptfmt.config import CheckpointConfig  # noqa: E402
from ckptfmt.constants import CONFIG_FILE, RANK_FILE  # noqa: E402
from ckptfmt.io import RankFileWriter, atomic_output_dir, write_manifest  # noqa: E402
from ckptfmt.names import expected_tensors  # noqa: E402

LIMITS = "--max_batch_size 8 --max_input_len 1024 --max_output_len 1024"
RANK_LINE = re.compile(r"built rank (\d+) of \d+ into \S+ \(([\d.]+) MB, ([\d.]+) s, peak RSS (\d+) MB\)")
PLAIN_RANK = re.compile(r"rank (\d+): \S+ \(([\d.]+) MB\) in ([\d.]+) s")
LLAMA_70B_BYTES = 70.6e9 * 2  # fp16 weights of a Llama-3-70B-shaped model


def write_checkpoint(path: Path, tp: int, pp: int) -> int:
    """A random fp16 checkpoint of ``SHAPE`` at tp x pp, one tensor in memory at a time; returns its bytes."""
    config = CheckpointConfig.from_dict(
        {**SHAPE, "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}}
    ).check()
    rng = np.random.default_rng(0)
    entries = {}
    with atomic_output_dir(path, overwrite=True) as tmp:
        for rank in range(tp * pp):
            specs = expected_tensors(config, rank)
            name = RANK_FILE.format(rank=rank)
            writer = RankFileWriter(tmp / name, {n: (np.float16, s.shape) for n, s in specs.items()})
            for tensor, spec in specs.items():
                base = 1.0 if "layernorm" in tensor or tensor.startswith("transformer.ln_f") else 0.0
                writer.write(tensor, (base + 0.02 * rng.standard_normal(spec.shape, dtype=np.float32)).astype("f2"))
            entries[name] = writer.close()
        config.save(tmp / CONFIG_FILE)
        write_manifest(tmp, entries)
    return sum(e["size"] for e in entries.values())


def plain_build(ckpt: Path, out: Path, target: str, workers: int) -> dict:
    """One ckpt-build process: wall and CPU seconds, peak RSS, each rank's seconds and plan MB (its log)."""
    cmd = [sys.executable, "-m", "ckpt_build.cli", "--checkpoint_dir", str(ckpt), "--output_dir", str(out)]
    cmd += [*LIMITS.split(), "--target", target, "--overwrite", "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, _, _ = watch_rss(proc)
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"ckpt-build failed: {err.strip().splitlines()[-1]}")
    ranks = {int(r): {"mb": float(mb), "seconds": float(s)} for r, mb, s in PLAIN_RANK.findall(err)}
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # with --workers the rank builds run in children of ckpt-build, whose VmHWM watch_rss does not see
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 1e6 if workers == 1 else None, "ranks": ranks}


def slurm_build(ckpt: Path, out: Path, target: str, work: Path) -> dict:
    """submit.sh's array + finalize on a private one-node Slurm: wall from submission to the published engine."""
    from tests.cluster.slurm_cluster import running_slurm

    with running_slurm(work / "slurm") as cluster:
        env = {
            **cluster.env,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "CKPT_CHECKPOINT": str(ckpt),
            "CKPT_ENGINE": str(out),
            "CKPT_TP": "2",
            "CKPT_PP": "2",
            "CKPT_LOGS": str(work / "logs"),
            "CKPT_BUILD_ARGS": f"{LIMITS} --target {target}",
            "CKPT_SKIP_CONVERT": "1",
            "CKPT_SKIP_EVAL": "1",
        }
        start = time.perf_counter()
        done = subprocess.run(["bash", str(REPO / "cluster/slurm/submit.sh")], env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"submit.sh failed: {done.stderr.strip()}")
        ids = dict(item.split("=") for item in done.stdout.split())
        cluster.wait_idle(1800)
        wall = time.perf_counter() - start
        if cluster.job_states(ids["finalize"]).get(ids["finalize"]) != "COMPLETED":
            raise SystemExit(f"the chain failed; logs in {work / 'logs'}")
    ranks = {}
    for log in (work / "logs").glob("build-*.out"):
        for r, mb, s, rss in RANK_LINE.findall(log.read_text()):
            ranks[int(r)] = {"mb": float(mb), "seconds": float(s), "peak_rss_mb": float(rss)}
    return {"wall_s": wall, "ranks": ranks}


def on_paper(plain: dict, slurm: dict, node_ram_gb: tuple[int, ...] = (128, 256, 1024)) -> dict:
    """70B fp16 at tp 8 (8 ranks of 17.65 GB), scaled from the measured ranks.

    Time: seconds per GB of plan of the plain build (one rank at a time, so no rank waits for another's cores).
    Peak RSS: a line through (plan size, peak RSS) of the Slurm tasks, one process per rank (its intercept is
    the interpreter and TensorRT; pp stages differ in size, so two points). One node runs ``--workers k`` with
    k as many builds as its memory holds; 8 nodes run one rank each (plus finalize: links, under a second).
    """
    ranks = plain["ranks"].values()
    per_gb = sum(r["seconds"] for r in ranks) / sum(r["mb"] for r in ranks) * 1e3
    points = np.array([(r["mb"], r["peak_rss_mb"]) for r in slurm["ranks"].values()])
    slope, base = np.polyfit(points[:, 0], points[:, 1], 1) if len(set(points[:, 0])) > 1 else (0, points[0, 1])
    rank_gb = LLAMA_70B_BYTES / 8 / 1e9
    seconds, rss_gb = per_gb * rank_gb, (base + slope * rank_gb * 1e3) / 1e3
    one_node = {}
    for ram in node_ram_gb:
        k = max(1, min(8, int(ram * 0.9 // rss_gb)))  # 10 % of the node's memory left to the system
        one_node[f"{ram}GB_workers_{k}_s"] = -(-8 // k) * seconds
    return {
        "rank_gb": rank_gb,
        "seconds_per_plan_gb": per_gb,
        "rss_mb_per_plan_mb": slope,
        "rss_base_mb": base,
        "rank_build_s": seconds,
        "rank_peak_rss_gb": rss_gb,
        "one_node_sequential_s": 8 * seconds,
        "one_node": one_node,
        "eight_nodes_s": seconds,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--target", default="sm89")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckpt-cluster-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt = work / "ckpt"
        ckpt_bytes = write_checkpoint(ckpt, 2, 2)
        plain = plain_build(ckpt, work / "plain", args.target, 1)
        workers = plain_build(ckpt, work / "workers", args.target, 2)
        shutil.rmtree(work / "logs", ignore_errors=True)
        slurm = slurm_build(ckpt, work / "engine", args.target, work)
        figures = {
            "checkpoint_gb": ckpt_bytes / 1e9,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "plain": plain,
            "workers_2": workers,
            "slurm_array": slurm,
            "70b_tp8": on_paper(plain, slurm),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
