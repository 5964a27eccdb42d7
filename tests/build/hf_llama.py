"""A tiny random HF LLaMA and its checkpoint, written here with ckptfmt (sharding, weight-only quantization).

Independent of the HF converter so the builder's numerics can be checked against transformers on their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptfmt.config import CheckpointConfig
from ckptfmt.io import save_checkpoint, to_numpy
from ckptfmt.names import expected_tensors
from ckptfmt.quant import quantize_weight_only
from ckptfmt.sharding import shard

HF_NAMES = {  # canonical suffix -> HF name template (per layer)
    "input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "attention.dense.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "post_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "mlp.fc.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "mlp.gate.weight": "model.layers.{i}.mlp.up_proj.weight",
    "mlp.proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def make_llama(path: Path, kv_heads: int = 2, layers: int = 2, seed: int = 0, tie: bool = False):
    """A random tiny LlamaForCausalLM (fp32) saved at ``path``; returns the model."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=250,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((1.0 if p.dim() == 1 else 0.0) + (0.1 if p.dim() == 1 else 0.05) * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def llama_checkpoint(
    model,
    out: Path,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "float32",
    quant: str | None = None,
    group_size: int | None = None,
    parallel_embedding: bool = False,
) -> Path:
    hf = model.config
    src = {
        "architecture": "LlamaForCausalLM",
        "dtype": dtype,
        "vocab_size": hf.vocab_size,
        "hidden_size": hf.hidden_size,
        "num_hidden_layers": hf.num_hidden_layers,
        "num_attention_heads": hf.num_attention_heads,
        "num_key_value_heads": hf.num_key_value_heads,
        "intermediate_size": hf.intermediate_size,
        "hidden_act": "silu",
        "norm_epsilon": hf.rms_norm_eps,
        "max_position_embeddings": hf.max_position_embeddings,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": 10000.0,
        "use_parallel_embedding": parallel_embedding,
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
    }
    if quant:
        src["quantization"] = {
            "use_weight_only": True,
            "weight_only_precision": quant,
            "per_group": bool(group_size),
            "group_size": group_size or 64,
        }
    config = CheckpointConfig.from_dict(src).check()
    state = {k: to_numpy(v).astype(np.float32) for k, v in model.state_dict().items()}
    full = _canonical(state, hf.num_hidden_layers)
    np_dtype = config.np_dtype
    ranks = {}
    for rank in range(config.mapping.world_size):
        first = config.mapping.layers_of_rank(hf.num_hidden_layers, rank).start
        tensors = {}
        for name in expected_tensors(config, rank):
            gname = _global(name, first)
            if quant and gname.endswith((".weight", ".per_channel_scale")) and _is_linear(gname):
                base = gname.rsplit(".", 1)[0] + ".weight"
                q, scale = quantize_weight_only(full[base].astype(np_dtype).astype(np.float32), quant, group_size)
                value = q if gname.endswith(".weight") else scale.astype(np_dtype)
            else:
                value = full[gname].astype(np_dtype)
            tensors[name] = np.ascontiguousarray(shard(gname, value, config, rank))
        ranks[rank] = tensors
    save_checkpoint(out, config, ranks)
    return out


def _is_linear(name: str) -> bool:
    return any(k in name for k in ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"))


def _global(name: str, first: int) -> str:
    if name.startswith("transformer.layers."):
        parts = name.split(".")
        parts[2] = str(int(parts[2]) + first)
        return ".".join(parts)
    return name


def _canonical(state: dict, layers: int) -> dict:
    out = {
        "transformer.vocab_embedding.weight": state["model.embed_tokens.weight"],
        "transformer.ln_f.weight": state["model.norm.weight"],
        "lm_head.weight": state.get("lm_head.weight", state["model.embed_tokens.weight"]),
    }
    for i in range(layers):
        p = f"transformer.layers.{i}."
        out[p + "attention.qkv.weight"] = np.concatenate(
            [state[f"model.layers.{i}.self_attn.{n}_proj.weight"] for n in "qkv"], axis=0
        )
        for suffix, tmpl in HF_NAMES.items():
            out[p + suffix] = state[tmpl.format(i=i)]
    return out
