"""Benchmark: ``ckpt-convert deepspeed`` on a ZeRO-3 checkpoint vs the path users take today, in the same run.

Writes a ZeRO-3 checkpoint of a ~1.1B LLaMA shape (TinyLlama: hidden 2048, ffn 5632, 22 layers, 32 heads / 4 KV
heads, vocab 32000; random fp32 masters) as DeepSpeed 0.19 lays it out at data-parallel ``--dp`` (per rank
``zero_pp_rank_{r}_mp_rank_00_model_states.pt`` with placeholder ``module`` tensors and ``param_shapes``, and
``zero_pp_rank_{r}_mp_rank_00_optim_states.pt`` whose ``fp32_flat_groups`` hold ``ceil(numel / dp)`` elements of
every parameter; written with ``torch.save`` by a child process). The Adam moments are left out unless
``--adam_states``: neither path reads them (DeepSpeed's script maps the files with ``mmap``).

Then, each in a child process timed with its process tree's RSS sampled every 20 ms:

- baseline: DeepSpeed's ``python -m deepspeed.utils.zero_to_fp32 CKPT OUT --safe_serialization`` (fp32 HF
  safetensors), then ``ckpt-convert hf --model_dir OUT --dtype bfloat16 --tp_size 2``; its time is the sum of the
  two, its peak RSS the larger. deepspeed is not a dependency of this project: ``--ds_python`` names the
  interpreter of a venv that has it (default /tmp/ds-venv/bin/python, see tests/fixtures/deepspeed/README.md).
- ours: ``ckpt-convert deepspeed --checkpoint_dir CKPT --model_config CONFIG --dtype bfloat16 --tp_size 2``.

Both outputs must be the same bytes (rank files compared by SHA-256). Targets (issue #20): ours <= 0.5x the
baseline's peak RSS and <= 0.7x its time.

    python bench/convert_deepspeed.py --dir /tmp/bench-ds [--layers 22] [--dp 4] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from convert_llama7b import timed

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000
TAG = "global_step100"


def param_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """HF LLaMA parameter names and shapes in ``model.parameters()`` order (DeepSpeed's ``param_shapes``)."""
    kv = HIDDEN // HEADS * KV_HEADS
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (kv, HIDDEN),
            p + "self_attn.v_proj.weight": (kv, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    out |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    return out


def hf_config(layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": layers,
        "vocab_size": VOCAB,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }


def write_zero3(step: Path, layers: int, dp: int, adam: bool) -> int:
    """The ZeRO-3 files of every rank (one rank's flat group in memory at a time); returns the parameter count."""
    import collections

    import numpy as np
    import torch

    shapes = param_shapes(layers)
    ds_config = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": 1}
    step.mkdir(parents=True)
    shares = [-(-math.prod(s) // dp) for s in shapes.values()]
    rng = np.random.default_rng(0)
    for rank in range(dp):
        flat = torch.from_numpy(rng.standard_normal(sum(shares), dtype=np.float32) * np.float32(0.02))
        model_states = {
            "module": collections.OrderedDict((n, torch.empty(0, dtype=torch.bfloat16)) for n in shapes),
            "buffer_names": [],
            "optimizer": None,
            "param_shapes": [collections.OrderedDict((n, torch.Size(s)) for n, s in shapes.items())],
            "frozen_param_shapes": collections.OrderedDict(),
            "shared_params": {},
            "frozen_param_fragments": collections.OrderedDict(),
            "lr_scheduler": None,
            "global_steps": 100,
            "dp_world_size": dp,
            "mp_world_size": 1,
            "ds_config": ds_config,
            "ds_version": "0.19.8",
        }
        torch.save(model_states, step / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        base = {"state": {0: {"step": torch.tensor(100.0), "exp_avg": flat, "exp_avg_sq": flat}}} if adam else {}
        optim = {
            "optimizer_state_dict": {
                "zero_stage": 3,
                "partition_count": dp,
                "optimizer_state_dict": base,
                "fp32_flat_groups": [flat],
            },
            "ds_config": ds_config,
            "ds_version": "0.19.8",
        }
        torch.save(optim, step / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        del flat, optim
    (step.parent / "latest").write_text(TAG)
    return sum(math.prod(s) for s in shapes.values())


def rank_digests(ckpt: Path) -> dict[str, str]:
    out = {}
    for path in sorted(ckpt.glob("rank*.safetensors")):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        out[path.name] = h.hexdigest()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="work directory (created; deleted afterwards)")
    parser.add_argument("--layers", type=int, default=22, help="decoder layers (22 = the ~1.1B shape)")
    parser.add_argument("--dp", type=int, default=4, help="data-parallel ranks of the ZeRO-3 checkpoint")
    parser.add_argument("--tp_size", type=int, default=2)
    parser.add_argument("--adam_states", action="store_true", help="also write exp_avg/exp_avg_sq (never read)")
    parser.add_argument("--ds_python", default="/tmp/ds-venv/bin/python", help="a python that imports deepspeed")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--write_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.dir
    ckpt, config_dir = work / "ds", work / "config"
    if args.write_only:  # the child process that writes the source
        count = write_zero3(ckpt / TAG, args.layers, args.dp, args.adam_states)
        config_dir.mkdir()
        (config_dir / "config.json").write_text(json.dumps(hf_config(args.layers), indent=2))
        print(f"source: {count / 1e9:.2f} B parameters, ZeRO-3 at dp {args.dp}", flush=True)
        return 0
    converter = [sys.executable, "-m", "ckpt_convert.cli"]
    flags = ["--dtype", "bfloat16", "--tp_size", str(args.tp_size)]
    try:
        if work.exists():
            raise SystemExit(f"error: {work} exists (give a new --dir)")
        work.mkdir(parents=True)
        start = time.monotonic()
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--write_only"], check=True)
        subprocess.run(["sync"], check=True)
        size = sum(p.stat().st_size for p in (ckpt / TAG).iterdir())
        print(f"written: {size / 1e9:.2f} GB in {time.monotonic() - start:.0f} s", flush=True)

        print("ours: ckpt-convert deepspeed ...", flush=True)
        ours_s, ours_mb, ours_cpu = timed(
            [*converter, "deepspeed", "--checkpoint_dir", str(ckpt), "--model_config", str(config_dir)]
            + ["--output_dir", str(work / "ours"), *flags]
        )
        print("baseline: zero_to_fp32 ...", flush=True)
        z_cmd = [args.ds_python, "-m", "deepspeed.utils.zero_to_fp32", str(ckpt), str(work / "fp32")]
        os.environ["DS_ACCELERATOR"] = "cpu"  # timed() starts the child with this process's environment
        z_s, z_mb, z_cpu = timed([*z_cmd, "--safe_serialization"])
        shutil.copy(config_dir / "config.json", work / "fp32" / "config.json")
        print("baseline: ckpt-convert hf ...", flush=True)
        hf_s, hf_mb, hf_cpu = timed(
            [*converter, "hf", "--model_dir", str(work / "fp32"), "--output_dir", str(work / "base"), *flags]
        )
        same = rank_digests(work / "ours") == rank_digests(work / "base")
        base_s, base_mb = z_s + hf_s, max(z_mb, hf_mb)
        print(f"zero_to_fp32:          {z_s:7.1f} s  peak RSS {z_mb:7.0f} MB  ({z_cpu:.0f} CPU s)")
        print(f"ckpt-convert hf:       {hf_s:7.1f} s  peak RSS {hf_mb:7.0f} MB  ({hf_cpu:.0f} CPU s)")
        print(f"baseline (both):       {base_s:7.1f} s  peak RSS {base_mb:7.0f} MB")
        print(f"ckpt-convert deepspeed:{ours_s:7.1f} s  peak RSS {ours_mb:7.0f} MB  ({ours_cpu:.0f} CPU s)")
        print(
            f"ratio: time {ours_s / base_s:.2f}x (target <= 0.7x), peak RSS {ours_mb / base_mb:.2f}x "
            f"(target <= 0.5x); outputs identical: {same}"
        )
        return 0 if same else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
