"""Falcon: old layout (multi-query or per-head qkv, parallel attention) and ``new_decoder_architecture``.

All three qkv layouts are "q heads, k, v per KV group", so one transform covers them.
"""

from __future__ import annotations

from ckptfmt.names import LAYER, LM_HEAD, LN_F, VOCAB_EMBEDDING

from ...rules import Rule, Table
from ...transforms import ungroup_qkv_per_kv_head
from ..hf_config import HFConfig
from .base import HFArchitecture, activation, sizes

H = "transformer.h.{i}."

TABLE = Table(
    rules=(
        Rule(VOCAB_EMBEDDING, "transformer.word_embeddings.weight"),
        Rule(LM_HEAD, "lm_head.weight", fallback="transformer.word_embeddings.weight"),
        *(Rule(f"{LN_F}.{k}", f"transformer.ln_f.{k}") for k in ("weight", "bias")),
        *(
            Rule(LAYER + f"attention.qkv.{k}", H + f"self_attention.query_key_value.{k}", ungroup_qkv_per_kv_head)
            for k in ("weight", "bias")
        ),
        *(
            Rule(LAYER + f"input_layernorm.{k}", H + f"ln_attn.{k}", fallback=H + f"input_layernorm.{k}")
            for k in ("weight", "bias")
        ),
        *(
            Rule(LAYER + f"{target}.{k}", H + f"{source}.{k}")
            for target, source in (
                ("mlp_layernorm", "ln_mlp"),
                ("post_layernorm", "post_attention_layernorm"),
                ("attention.dense", "self_attention.dense"),
                ("mlp.fc", "mlp.dense_h_to_4h"),
                ("mlp.proj", "mlp.dense_4h_to_h"),
            )
            for k in ("weight", "bias")
        ),
    ),
    ignore=(r"transformer\.h\.\d+\.self_attention\.(maybe_rotary|rotary_emb)\..*",),
)

# RefinedWeb*: the configs of the original remote-code Falcon checkpoints (same tensor names)
MODEL_TYPES = {"falcon": "FalconForCausalLM", "RefinedWeb": "FalconForCausalLM", "RefinedWebModel": "FalconForCausalLM"}


def translate(hf: HFConfig) -> dict:
    heads = hf.require("num_attention_heads", "n_head")
    hidden = hf.require("hidden_size")
    new_arch = bool(hf.get("new_decoder_architecture", default=hf.model_type == "RefinedWeb"))
    if new_arch:
        if hf.get("num_ln_in_parallel_attn", default=2) != 2:
            raise hf.unsupported("num_ln_in_parallel_attn", "new_decoder_architecture with one layer norm")
        kv_heads = hf.get("num_kv_heads", "n_head_kv", default=heads)
    else:
        kv_heads = 1 if hf.get("multi_query", default=True) else heads
    alibi = bool(hf.get("alibi", default=False))
    out = {
        **sizes(
            hf,
            MODEL_TYPES[hf.model_type],
            heads=("num_attention_heads", "n_head"),
            layers=("num_hidden_layers", "n_layer"),
        ),
        "num_key_value_heads": kv_heads,
        **activation(hf.get("activation", default="gelu")),
        "intermediate_size": hf.get("ffn_hidden_size", default=4 * hidden),
        "norm_epsilon": float(hf.get("layer_norm_epsilon", default=1e-5)),
        "position_embedding_type": "alibi" if alibi else "rope_gpt_neox",
        "bias": bool(hf.get("bias", default=False)),
        "parallel_attention": bool(hf.get("parallel_attn", default=True)),
        "new_decoder_architecture": new_arch,
    }
    if not alibi:
        out["rotary_base"] = hf.rope_theta()
        out["rotary_scaling"] = hf.rope_scaling()
    return out


ARCHITECTURE = HFArchitecture(MODEL_TYPES, TABLE, translate, tied_default=True)
