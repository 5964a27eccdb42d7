"""GPT-NeoX (Pythia, ...): fused query_key_value interleaved per head, partial rotary, parallel residual."""

from __future__ import annotations

from ckptfmt.names import LAYER, LM_HEAD, LN_F, VOCAB_EMBEDDING

from ...rules import Rule, Table
from ...transforms import ungroup_qkv_per_head
from ..hf_config import HFConfig
from .base import HFArchitecture, activation, sizes

L = "gpt_neox.layers.{i}."

TABLE = Table(
    rules=(
        Rule(VOCAB_EMBEDDING, "gpt_neox.embed_in.weight"),
        Rule(LM_HEAD, "embed_out.weight", fallback="gpt_neox.embed_in.weight"),
        *(Rule(f"{LN_F}.{k}", f"gpt_neox.final_layer_norm.{k}") for k in ("weight", "bias")),
        *(
            Rule(LAYER + f"attention.qkv.{k}", L + f"attention.query_key_value.{k}", ungroup_qkv_per_head)
            for k in ("weight", "bias")
        ),
        *(
            Rule(LAYER + f"{target}.{k}", L + f"{source}.{k}")
            for target, source in (
                ("input_layernorm", "input_layernorm"),
                ("post_attention_layernorm", "post_attention_layernorm"),
                ("attention.dense", "attention.dense"),
                ("mlp.fc", "mlp.dense_h_to_4h"),
                ("mlp.proj", "mlp.dense_4h_to_h"),
            )
            for k in ("weight", "bias")
        ),
    ),
    ignore=(r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",),
)

MODEL_TYPES = {"gpt_neox": "GPTNeoXForCausalLM"}


def translate(hf: HFConfig) -> dict:
    if not hf.get("attention_bias", default=True):
        raise hf.unsupported("attention_bias", "GPT-NeoX without attention biases")
    return {
        **sizes(hf, MODEL_TYPES[hf.model_type]),
        **activation(hf.get("hidden_act", default="gelu")),
        "intermediate_size": hf.require("intermediate_size"),
        "norm_epsilon": float(hf.get("layer_norm_eps", default=1e-5)),
        "position_embedding_type": "rope_gpt_neox",
        "rotary_pct": hf.partial_rotary_factor("rotary_pct"),
        "rotary_base": hf.rope_theta("rotary_emb_base"),
        "rotary_scaling": hf.rope_scaling(),
        "use_parallel_residual": bool(hf.get("use_parallel_residual", default=True)),
        "bias": True,
    }


ARCHITECTURE = HFArchitecture(MODEL_TYPES, TABLE, translate, tied_default=False)
