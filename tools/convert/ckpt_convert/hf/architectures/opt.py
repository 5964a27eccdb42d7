"""OPT: pre- or post-norm (``do_layer_norm_before``), optional projection dims, positions offset by 2 rows."""

from __future__ import annotations

from ckptfmt.names import LAYER, LM_HEAD, LN_F, POSITION_EMBEDDING, PROJECT_IN, PROJECT_OUT, VOCAB_EMBEDDING

from ...rules import Rule, Table
from ...transforms import DropRows, concat_rows
from ..hf_config import HFConfig
from .base import HFArchitecture, activation, sizes

D = "model.decoder."
L = D + "layers.{i}."
OPT_POSITION_OFFSET = 2  # OPT's learned position table has 2 extra leading rows

TABLE = Table(
    rules=(
        Rule(VOCAB_EMBEDDING, D + "embed_tokens.weight"),
        Rule(POSITION_EMBEDDING, D + "embed_positions.weight", DropRows(OPT_POSITION_OFFSET)),
        Rule(PROJECT_IN, D + "project_in.weight"),
        Rule(PROJECT_OUT, D + "project_out.weight"),
        Rule(LM_HEAD, "lm_head.weight", fallback=D + "embed_tokens.weight"),
        *(Rule(f"{LN_F}.{k}", D + f"final_layer_norm.{k}") for k in ("weight", "bias")),
        *(
            Rule(LAYER + f"attention.qkv.{k}", tuple(L + f"self_attn.{p}_proj.{k}" for p in "qkv"), concat_rows)
            for k in ("weight", "bias")
        ),
        *(
            Rule(LAYER + f"{target}.{k}", L + f"{source}.{k}")
            for target, source in (
                ("input_layernorm", "self_attn_layer_norm"),
                ("post_layernorm", "final_layer_norm"),
                ("attention.dense", "self_attn.out_proj"),
                ("mlp.fc", "fc1"),
                ("mlp.proj", "fc2"),
            )
            for k in ("weight", "bias")
        ),
    ),
    optional_prefixes=("model.",),  # facebook/opt-* .bin files name tensors "decoder.…"
)

MODEL_TYPES = {"opt": "OPTForCausalLM"}


def translate(hf: HFConfig) -> dict:
    pre_norm = bool(hf.get("do_layer_norm_before", default=True))
    if pre_norm and hf.get("_remove_final_layer_norm", default=False):
        raise hf.unsupported("_remove_final_layer_norm", "pre-norm OPT without a final layer norm")
    if not hf.get("layer_norm_elementwise_affine", default=True):
        raise hf.unsupported("layer_norm_elementwise_affine", "layer norms without weights")
    if not hf.get("enable_bias", default=True):
        raise hf.unsupported("enable_bias", "OPT without biases")
    hidden = hf.require("hidden_size")
    return {
        **sizes(hf, MODEL_TYPES[hf.model_type]),
        **activation(hf.get("activation_function", default="relu")),
        "intermediate_size": hf.require("ffn_dim"),
        "norm_epsilon": 1e-5,  # OPT uses nn.LayerNorm's default
        "position_embedding_type": "learned_absolute",
        "do_layer_norm_before": pre_norm,
        "word_embed_proj_dim": hf.get("word_embed_proj_dim", default=hidden),
        "bias": True,
    }


ARCHITECTURE = HFArchitecture(MODEL_TYPES, TABLE, translate, tied_default=True)
