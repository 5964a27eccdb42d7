"""LLaMA family: Llama, Mistral, Qwen2 (q/k/v biases). GQA/MQA, tied or untied, rope scaling carried over."""

from __future__ import annotations

from ckptfmt.names import LAYER, LM_HEAD, LN_F, VOCAB_EMBEDDING

from ...rules import Rule, Table
from ...transforms import concat_rows
from ..hf_config import HFConfig
from .base import HFArchitecture, activation, sizes

L = "model.layers.{i}."
ATTN = L + "self_attn."

TABLE = Table(
    rules=(
        Rule(VOCAB_EMBEDDING, "model.embed_tokens.weight"),
        Rule(LM_HEAD, "lm_head.weight", fallback="model.embed_tokens.weight"),
        Rule(LN_F + ".weight", "model.norm.weight"),
        Rule(LAYER + "input_layernorm.weight", L + "input_layernorm.weight"),
        Rule(LAYER + "post_layernorm.weight", L + "post_attention_layernorm.weight"),
        *(
            Rule(LAYER + f"attention.qkv.{kind}", tuple(ATTN + f"{p}_proj.{kind}" for p in "qkv"), concat_rows)
            for kind in ("weight", "bias")
        ),
        *(
            Rule(LAYER + f"{target}.{kind}", L + f"{source}.{kind}")
            for target, source in (
                ("attention.dense", "self_attn.o_proj"),
                ("mlp.fc", "mlp.gate_proj"),
                ("mlp.gate", "mlp.up_proj"),
                ("mlp.proj", "mlp.down_proj"),
            )
            for kind in ("weight", "bias")
        ),
    ),
    ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)

MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def translate(hf: HFConfig) -> dict:
    heads, hidden = hf.require("num_attention_heads"), hf.require("hidden_size")
    attention_bias, mlp_bias = bool(hf.get("attention_bias", default=False)), bool(hf.get("mlp_bias", default=False))
    if attention_bias != mlp_bias:
        raise hf.unsupported("attention_bias", "biases on attention but not on the MLP, or the reverse")
    out = {
        **sizes(hf, MODEL_TYPES[hf.model_type]),
        "num_key_value_heads": hf.get("num_key_value_heads", default=heads),
        "head_size": hf.get("head_dim", default=hidden // heads),
        **activation(hf.require("hidden_act", kind=str)),
        "intermediate_size": hf.require("intermediate_size"),
        "norm_epsilon": hf.require("rms_norm_eps", kind=float),
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": hf.rope_theta(),
        "rotary_scaling": hf.rope_scaling(),
        "bias": attention_bias,
        "qkv_bias": attention_bias or hf.model_type == "qwen2",
    }
    window = hf.get("sliding_window") if hf.get("use_sliding_window", default=hf.model_type != "qwen2") else None
    if window:
        out["sliding_window"] = window
    return out


ARCHITECTURE = HFArchitecture(MODEL_TYPES, TABLE, translate, tied_default=False)
