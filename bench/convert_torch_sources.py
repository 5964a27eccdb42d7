"""Benchmark: peak RSS and wall time of converting torch-pickle sources (``pytorch_model.bin``, NeMo 1 ``.nemo``).

Writes a LLaMA-7B-shaped model with ``--layers`` layers (random fp16) as one ``pytorch_model.bin`` (torch.save) and
as an uncompressed NeMo 1 ``.nemo`` (``model_config.yaml`` + ``model_weights.ckpt``), then converts each to fp16
tp 2 in a child process and reports its wall time and peak RSS (process tree, sampled every 20 ms). The sources are
written by a child process (Linux keeps a parent's peak RSS in a child's ``ru_maxrss`` across fork + exec, so the
converter's own summary would otherwise show the writer's memory). ``--keep`` keeps them, and a later run on the
same ``--dir`` reuses them: with ``PYTHONPATH=<other checkout>/tools/convert`` it measures another version of the
converter on the same files.

    python bench/convert_torch_sources.py --dir /tmp/bench-torch --layers 2 --keep
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import yaml
from convert_llama7b import FFN, HEADS, HIDDEN, VOCAB, llama7b_tensors, random_fp16, timed


def write_bin(model_dir: Path, layers: int) -> dict:
    """config.json + pytorch_model.bin; returns the state dict (torch tensors) for the NeMo copy."""
    import torch

    rng = np.random.default_rng(0)
    state = {n: torch.from_numpy(random_fp16(s, rng)) for n, s in llama7b_tensors(layers)}
    model_dir.mkdir(parents=True)
    torch.save(state, model_dir / "pytorch_model.bin")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_hidden_layers": layers,
        "num_key_value_heads": HEADS,
        "vocab_size": VOCAB,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "dtype": "float16",
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    return state


def write_nemo(path: Path, state: dict, layers: int) -> None:
    """The same weights in Megatron-core naming (q/k/v fused per group, fc1 = [gate; up]) as a NeMo 1 archive."""
    import torch

    out = {"model.embedding.word_embeddings.weight": state["model.embed_tokens.weight"]}
    for i in range(layers):
        p, m = f"model.layers.{i}.", f"model.decoder.layers.{i}."
        q, k, v = (state[p + f"self_attn.{n}_proj.weight"].reshape(HEADS, 1, HIDDEN // HEADS, HIDDEN) for n in "qkv")
        out[m + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, HIDDEN)
        out[m + "self_attention.linear_qkv.layer_norm_weight"] = state[p + "input_layernorm.weight"]
        out[m + "self_attention.linear_proj.weight"] = state[p + "self_attn.o_proj.weight"]
        out[m + "mlp.linear_fc1.layer_norm_weight"] = state[p + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat(
            [state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]]
        )
        out[m + "mlp.linear_fc2.weight"] = state[p + "mlp.down_proj.weight"]
    out["model.decoder.final_layernorm.weight"] = state["model.norm.weight"]
    out["model.output_layer.weight"] = state["lm_head.weight"]
    work = path.with_suffix(".d")
    work.mkdir()
    torch.save(out, work / "model_weights.ckpt")
    hparams = {
        "num_layers": layers,
        "hidden_size": HIDDEN,
        "ffn_hidden_size": FFN,
        "num_attention_heads": HEADS,
        "normalization": "rmsnorm",
        "activation": "fast-swiglu",
        "bias": False,
        "position_embedding_type": "rope",
        "max_position_embeddings": 4096,
        "layernorm_epsilon": 1e-5,
        "precision": 16,
    }
    (work / "model_config.yaml").write_text(yaml.safe_dump(hparams))
    with tarfile.open(path, "w") as tar:
        for name in ("model_config.yaml", "model_weights.ckpt"):
            tar.add(work / name, f"./{name}")
    shutil.rmtree(work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="work directory (created; deleted afterwards)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of LLaMA-7B shape (0.4 GB each)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)  # the writer child
    args = parser.parse_args()
    work = args.dir
    if args.write_only:
        write_nemo(work / "model.nemo", write_bin(work / "hf", args.layers), args.layers)
        return 0
    converter = [sys.executable, "-m", "ckpt_convert.cli"]
    try:
        if not (work / "model.nemo").exists():
            argv = [sys.executable, __file__, "--dir", str(work), "--layers", str(args.layers), "--write-only"]
            subprocess.run(argv, check=True)
        size = (work / "hf" / "pytorch_model.bin").stat().st_size
        print(f"source: {args.layers} layers, {size / 1e9:.2f} GB (.bin and .nemo)", flush=True)
        for kind, flag, src in (("hf", "--model_dir", work / "hf"), ("nemo", "--nemo_ckpt_path", work / "model.nemo")):
            out = work / f"ckpt-{kind}"
            cmd = [*converter, kind, flag, str(src), "--output_dir", str(out), "--dtype", "float16", "--tp_size", "2"]
            wall, rss_mb, cpu = timed(cmd)
            print(f"{kind:5s} {wall:6.1f} s ({cpu:.1f} CPU s), peak RSS {rss_mb:.0f} MB sampled", flush=True)
            shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
