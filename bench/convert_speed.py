"""Converter speed: ``ckpt-convert hf --tp_size 2`` against ``cp -r`` + sync of the same shards, and start-up time.

    python bench/convert_speed.py                       # TinyLlama-1.1B shape (2.2 GB fp16), 3 paired rounds
    python bench/convert_speed.py --7b --rounds 3       # LLaMA-7B shape (13.5 GB; ~41 GB free disk at peak)

Writes a random fp16 HF model (config.json + safetensors, tensor by tensor), then runs, in alternating order per
round, the converter (the ``ckpt-convert`` console script, a child process) and the peer ``cp -r SRC DST && sync
DST/* DST`` (coreutils ``sync FILE`` fsyncs each file, as the converter fsyncs its rank files and directories).
Wall time, CPU time (user + system) and peak RSS (GNU time) per run; medians, ranges and the ratio of medians,
plus the ratio of each pair. On a shared machine the CPU seconds are the steadier figure. Page caches cannot be
dropped here (no root): the source stays in the page cache for both, since it was just written and is read by
every run; each output is removed and the disk synced, untimed, before the next run. Start-up:
``ckpt-convert --help`` and ``ckpt-convert hf --help`` wall time against ``python -c pass``, and the import time
of the CLI with the hf parser in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ckptfmt import RankFileWriter

TINYLLAMA = {"hidden": 2048, "ffn": 5632, "heads": 32, "kv_heads": 4, "layers": 22, "vocab": 32000}
LLAMA7B = {"hidden": 4096, "ffn": 11008, "heads": 32, "kv_heads": 32, "layers": 32, "vocab": 32000}
SHARD_BYTES = 5 * 1024**3
CONVERTER = str(Path(sys.executable).with_name("ckpt-convert"))
GNU_TIME = "/usr/bin/time"  # GNU time: peak RSS of a command


def hf_tensors(s: dict) -> list[tuple[str, tuple[int, ...]]]:
    """HF LLaMA tensor names and shapes in file order."""
    h, kv = s["hidden"], s["hidden"] // s["heads"] * s["kv_heads"]
    out = [("model.embed_tokens.weight", (s["vocab"], h))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h))]
        out += [(p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h))]
        out += [(p + "mlp.gate_proj.weight", (s["ffn"], h)), (p + "mlp.up_proj.weight", (s["ffn"], h))]
        out += [(p + "mlp.down_proj.weight", (h, s["ffn"]))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (s["vocab"], h))]


def random_fp16(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random finite fp16 values in (-2, 2): random bits with the top exponent bit cleared."""
    bits = np.frombuffer(rng.bytes(math.prod(shape) * 2), dtype=np.uint16) & np.uint16(0xBFFF)
    return bits.view(np.float16).reshape(shape)


def write_source(model_dir: Path, s: dict) -> int:
    """config.json + safetensors shard(s) (+ index when several), streamed; returns the weight bytes."""
    model_dir.mkdir(parents=True)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in hf_tensors(s):
        nbytes = math.prod(shape) * 2
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    rng, weight_map, total = np.random.default_rng(0), {}, 0
    for k, shard in enumerate(shards):
        file = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with RankFileWriter(model_dir / file, {n: (np.float16, sh) for n, sh in shard}, {"format": "pt"}) as w:
            for name, shape in shard:
                w.write(name, random_fp16(shape, rng))
                weight_map[name] = file
                total += math.prod(shape) * 2
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s["hidden"],
        "intermediate_size": s["ffn"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "num_hidden_layers": s["layers"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": 2048,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": "float16",
        "tie_word_embeddings": False,
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return total


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, peak RSS MB, CPU s) of ``cmd`` as a child process. The RSS is GNU time's ``%M`` (the command's
    ``ru_maxrss``, its children included): ``wait4`` here would also count this process's own pages, which a
    forked child shares until it execs."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.monotonic()
        run = subprocess.run(
            [GNU_TIME, "-f", "%M %U %S", "-o", rss.name, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wall = time.monotonic() - start
        if run.returncode:
            sys.exit(f"error: {' '.join(cmd)} failed with status {run.returncode}: {run.stderr.decode().strip()}")
        peak, user, system = rss.read().split()[-3:]
        return wall, int(peak) / 1024, float(user) + float(system)


def settle(path: Path) -> None:
    """Remove a run's output and sync, untimed, so that its deletion does not land in the next run."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"], check=True)


def paired_rounds(src: Path, work: Path, rounds: int, tp: int) -> dict[str, list[tuple[float, float, float]]]:
    out_dir, copy = work / "ckpt", work / "copy"
    runs = {
        "ckpt-convert": [CONVERTER, "hf", "--model_dir", str(src), "--output_dir", str(out_dir)]
        + ["--dtype", "float16", "--tp_size", str(tp), "--quiet"],
        "cp -r + sync": ["sh", "-c", f'cp -r "{src}" "{copy}" && sync "{copy}"/* "{copy}"'],
    }
    outputs = {"ckpt-convert": out_dir, "cp -r + sync": copy}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    settle(out_dir)
    settle(copy)
    for i in range(rounds):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            results[name].append(timed(runs[name]))
            settle(outputs[name])
            wall, rss, cpu = results[name][-1]
            print(f"  round {i + 1} {name:13s} {wall:6.2f} s  {cpu:5.2f} CPU s  peak RSS {rss:4.0f} MB", flush=True)
    return results


def startup(repeat: int) -> dict[str, list[tuple[float, float]]]:
    """(wall s, CPU s) of the CLI's start-up paths, and the import time of the hf subcommand's parser (wall, process
    CPU), each in a fresh interpreter."""
    probe = (
        "import time; t, c = time.perf_counter(), time.process_time(); import ckpt_convert.cli as cli; "
        "cli.build_parser(['hf']); print(time.perf_counter() - t, time.process_time() - c)"
    )
    cmds = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ckpt-convert --help": [CONVERTER, "--help"],
        "ckpt-convert hf --help": [CONVERTER, "hf", "--help"],
    }
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in [*cmds, "import cli + hf parser"]}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            wall, _, cpu = timed(cmd)
            out[name].append((wall, cpu))
        run = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
        wall, cpu = (float(x) for x in run.stdout.split())
        out["import cli + hf parser"].append((wall, cpu))
    return out


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} s  ({min(values):.2f} - {max(values):.2f})"


def report(results: dict[str, list[tuple[float, float, float]]], total: int) -> None:
    ours, peer = results["ckpt-convert"], results["cp -r + sync"]
    for name, runs in results.items():
        walls, rss, cpu = ([r[k] for r in runs] for k in range(3))
        gbs = total / 1e9 / statistics.median(walls)
        print(
            f"{name:13s} {spread(walls)}  {gbs:.2f} GB/s  CPU median {statistics.median(cpu):.2f} s  "
            f"peak RSS {max(rss):.0f} MB (max of {len(runs)})"
        )
    pairs = [a[0] / b[0] for a, b in zip(ours, peer)]
    ratio = statistics.median(r[0] for r in ours) / statistics.median(r[0] for r in peer)
    per_pair = ", ".join(f"{p:.2f}" for p in pairs)
    print(f"ratio ckpt-convert / (cp -r + sync): {ratio:.2f}x of medians; per pair {per_pair}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--7b", dest="llama7b", action="store_true", help="LLaMA-7B shape instead of TinyLlama-1.1B")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (quick runs)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (>= 3 for the documented figures)")
    parser.add_argument("--tp_size", type=int, default=2)
    parser.add_argument("--startup", type=int, default=5, help="start-up repeats")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (created; removed afterwards)")
    args = parser.parse_args()
    if not Path(GNU_TIME).is_file():
        sys.exit(f"error: {GNU_TIME} (GNU time) is needed to read peak RSS; apt-get install time")
    shape = dict(LLAMA7B if args.llama7b else TINYLLAMA)
    if args.layers is not None:
        shape["layers"] = args.layers
    work = args.dir or Path(tempfile.mkdtemp(prefix="convert-speed-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.startup:
            print("start-up (fresh interpreters):")
            for name, times in startup(args.startup).items():
                cpu = statistics.median(c for _, c in times)
                print(f"  {name:24s} wall {spread([w for w, _ in times])}  CPU median {cpu:.2f} s")
        start = time.monotonic()
        total = write_source(work / "hf", shape)
        subprocess.run(["sync"], check=True)
        print(
            f"source: {shape['layers']} layers, hidden {shape['hidden']}, {total / 1e9:.2f} GB fp16, written in "
            f"{time.monotonic() - start:.0f} s; page cache warm for every run (cannot be dropped here)"
        )
        report(paired_rounds(work / "hf", work, args.rounds, args.tp_size), total)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
