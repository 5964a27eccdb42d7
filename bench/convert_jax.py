"""Peak memory of ``ckpt-convert jax`` against the largest array of the tree (needs orbax-checkpoint and flax).

Writes a LLaMA-shaped tree of random float32 weights in transformers' Flax names (default: hidden 2048, ffw 5632,
vocab 32000, 4 layers; the embedding and lm_head, 262 MB each, are the largest arrays) with orbax's
StandardCheckpointer (OCDBT) and flax's msgpack, converts each to bfloat16 at tp 2 and prints the converter's own
peak RSS (its summary line) beside the largest array's size and the whole tree's.

    .venv/bin/python bench/convert_jax.py --dir /tmp/jax-bench [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def tree(layers: int, hidden: int, ffw: int, vocab: int, heads: int) -> dict:
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    block = {
        "self_attn": {f"{p}_proj": {"kernel": w(hidden, hidden)} for p in "qkvo"},
        "mlp": {"gate_proj": {"kernel": w(hidden, ffw)}, "up_proj": {"kernel": w(hidden, ffw)}},
        "input_layernorm": {"weight": w(hidden)},
        "post_attention_layernorm": {"weight": w(hidden)},
    }
    block["mlp"]["down_proj"] = {"kernel": w(ffw, hidden)}
    return {
        "model": {
            "embed_tokens": {"embedding": w(vocab, hidden)},
            "layers": {str(i): block for i in range(layers)},  # the same arrays per layer: writing stays cheap
            "norm": {"weight": w(hidden)},
        },
        "lm_head": {"kernel": w(hidden, vocab)},
    }


def config(layers: int, hidden: int, ffw: int, vocab: int, heads: int) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffw,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "dtype": "float32",
    }


def convert(source: Path, hf: Path, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "ckpt_convert.cli", "jax", "--checkpoint_dir", str(source), "--model_config"]
    cmd += [str(hf), "--dtype", "bfloat16", "--tp_size", "2", "--output_dir", str(out), "--overwrite"]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rss = re.search(r"peak RSS (\d+) MB", done.stdout)
    assert rss, done.stdout + done.stderr
    return time.monotonic() - start, float(rss.group(1))


def write(root: Path, layers: int) -> None:
    """The tree, saved by orbax and flax (run in a child process: its memory must not count for the converter,
    whose getrusage peak starts from its parent's)."""
    import flax.serialization
    import orbax.checkpoint as ocp

    dims = (layers, 2048, 5632, 32000, 16)
    (root / "hf").mkdir(parents=True)
    (root / "hf" / "config.json").write_text(json.dumps(config(*dims)))
    params = tree(*dims)
    largest = max(a.nbytes for a in _leaves(params)) / 1e6
    total = sum(a.nbytes for a in _leaves(params, unique=False)) / 1e6
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((root / "ocdbt").resolve(), params)
    checkpointer.wait_until_finished()
    (root / "flax.msgpack").write_bytes(flax.serialization.to_bytes(params))
    (root / "sizes.json").write_text(json.dumps({"largest": largest, "total": total}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.dir
    if args.write_only:
        write(root, args.layers)
        return 0
    shutil.rmtree(root, ignore_errors=True)
    cmd = [sys.executable, __file__, "--dir", str(root), "--layers", str(args.layers), "--write-only"]
    subprocess.run(cmd, check=True, capture_output=True)
    sizes = json.loads((root / "sizes.json").read_text())
    largest = sizes["largest"]
    print(f"tree: {sizes['total']:.0f} MB float32, largest array {largest:.0f} MB")
    for source in ("ocdbt", "flax.msgpack"):
        seconds, rss = convert(root / source, root / "hf", root / f"out-{source}")
        print(f"{source}: {seconds:.1f} s, peak RSS {rss:.0f} MB ({rss / largest:.2f}x the largest array)")
    shutil.rmtree(root, ignore_errors=True)
    return 0


def _leaves(node: dict, unique: bool = True):
    seen: set[int] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        for value in item.values():
            if isinstance(value, dict):
                stack.append(value)
            elif not unique or id(value) not in seen:
                seen.add(id(value))
                yield value


if __name__ == "__main__":
    sys.exit(main())
