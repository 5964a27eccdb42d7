"""Benchmark: convert a LLaMA-7B-shaped HF checkpoint (random fp16, sharded safetensors) to fp16 tp 2.

Writes the source checkpoint tensor by tensor (never more than one tensor in memory), times a plain
``cp -r`` of the shards (and ``cp`` + ``sync``, since the converter fsyncs its rank files), then times
``ckpt-convert hf --dtype float16 --tp_size 2`` as a child process and reports its wall time, peak RSS
and the ratio to ``cp``. Targets (issue 4): peak RSS < 2 GB, wall time within 1.5x of ``cp``.

    python bench/convert_llama7b.py --dir /work/bench-7b            # full size: 13.5 GB source, ~28 GB peak disk
    python bench/convert_llama7b.py --dir /tmp/bench --layers 4     # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ckptfmt import RankFileWriter

HIDDEN, FFN, HEADS, VOCAB, LAYERS = 4096, 11008, 32, 32000, 32
SHARD_BYTES = 5 * 1024**3


def llama7b_tensors(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """HF LLaMA tensor names and shapes, in file order."""
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,))]
        out += [(p + f"self_attn.{n}_proj.weight", (HIDDEN, HIDDEN)) for n in "qkvo"]
        out += [
            (p + "mlp.gate_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, FFN)),
        ]
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def random_fp16(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random finite fp16 values in (-2, 2): random bits with the top exponent bit cleared (fast)."""
    bits = np.frombuffer(rng.bytes(int(np.prod(shape)) * 2), dtype=np.uint16) & np.uint16(0xBFFF)
    return bits.view(np.float16).reshape(shape)


def write_source(model_dir: Path, layers: int, seed: int = 0) -> int:
    """config.json + model-0000i-of-0000N.safetensors + index, streamed; returns the total bytes."""
    model_dir.mkdir(parents=True)
    tensors = llama7b_tensors(layers)
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = int(np.prod(shape)) * 2
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    rng, weight_map, total = np.random.default_rng(seed), {}, 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with RankFileWriter(model_dir / file, {n: (np.float16, s) for n, s in shard}, {"format": "pt"}) as w:
            for name, shape in shard:
                w.write(name, random_fp16(shape, rng))
                weight_map[name] = file
                total += int(np.prod(shape)) * 2
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "num_hidden_layers": layers,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "torch_dtype": "float16",
        "tie_word_embeddings": False,
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return total


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, peak RSS MB of the command's process tree sampled every 20 ms, CPU s user + system)."""
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    root, peak = psutil.Process(proc.pid), 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:  # a process ended while sampling
            pass
        time.sleep(0.02)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"error: {' '.join(cmd)} failed with status {os.waitstatus_to_exitcode(status)}")
    return wall, peak / 2**20, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="work directory (created; deleted afterwards)")
    parser.add_argument("--layers", type=int, default=LAYERS, help="decoder layers (32 = LLaMA-7B)")
    parser.add_argument("--tp_size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle", type=float, default=20, help="seconds to wait after deleting the copy")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()
    work, src = args.dir, args.dir / "hf"
    converter = [sys.executable, "-m", "ckpt_convert.cli"]  # = the ckpt-convert console script
    try:
        start = time.monotonic()
        total = write_source(src, args.layers)
        subprocess.run(["sync"], check=True)
        print(
            f"source: {args.layers} layers, {total / 1e9:.2f} GB in "
            f"{len(list(src.glob('*.safetensors')))} shards, written in {time.monotonic() - start:.0f} s"
        )
        cp_s, _, cp_cpu = timed(["cp", "-r", str(src), str(work / "copy")])
        sync_s, _, _ = timed(["sync"])
        shutil.rmtree(work / "copy")
        subprocess.run(["sync"], check=True)
        time.sleep(args.settle)  # let the deletion's discards finish before the next timing
        print("converting (the converter's own summary line follows) ...", flush=True)
        conv_s, rss_mb, conv_cpu = timed(
            [
                *converter,
                "hf",
                "--model_dir",
                str(src),
                "--output_dir",
                str(work / "ckpt"),
                "--dtype",
                "float16",
                "--tp_size",
                str(args.tp_size),
                "--workers",
                str(args.workers),
            ]
        )
        out_bytes = sum(p.stat().st_size for p in (work / "ckpt").glob("rank*.safetensors"))
        print(f"cp -r:           {cp_s:7.1f} s  ({total / 1e9 / cp_s:.2f} GB/s, {cp_cpu:.1f} CPU s)")
        print(f"cp -r + sync:    {cp_s + sync_s:7.1f} s")
        print(
            f"ckpt-convert:    {conv_s:7.1f} s  ({out_bytes / 1e9:.2f} GB written, tp {args.tp_size}, "
            f"workers {args.workers}, {conv_cpu:.1f} CPU s), peak RSS {rss_mb:.0f} MB sampled"
        )
        print(
            f"ratio to cp:     {conv_s / cp_s:.2f}x  (to cp + sync: {conv_s / (cp_s + sync_s):.2f}x); "
            f"targets: <= 1.5x, peak RSS < 2048 MB (see also the converter's own line)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
