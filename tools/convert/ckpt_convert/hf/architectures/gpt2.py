"""GPT-2: Conv1D weights stored [in, out] (transposed here), learned positions, head tied to wte."""

from __future__ import annotations

from ckptfmt.names import LAYER, LM_HEAD, LN_F, POSITION_EMBEDDING, VOCAB_EMBEDDING

from ...rules import Rule, Table
from ...transforms import transpose
from ..hf_config import HFConfig
from .base import HFArchitecture, activation, sizes

H = "transformer.h.{i}."

TABLE = Table(
    rules=(
        Rule(VOCAB_EMBEDDING, "transformer.wte.weight"),
        Rule(POSITION_EMBEDDING, "transformer.wpe.weight"),
        Rule(LM_HEAD, "lm_head.weight", fallback="transformer.wte.weight"),
        *(Rule(f"{LN_F}.{k}", f"transformer.ln_f.{k}") for k in ("weight", "bias")),
        *(
            Rule(LAYER + f"{target}.{kind}", H + f"{source}.{kind}")
            for target, source in (("input_layernorm", "ln_1"), ("post_layernorm", "ln_2"))
            for kind in ("weight", "bias")
        ),
        *(
            Rule(LAYER + f"{target}.weight", H + f"{source}.weight", transpose)
            for target, source in (
                ("attention.qkv", "attn.c_attn"),
                ("attention.dense", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            )
        ),
        *(
            Rule(LAYER + f"{target}.bias", H + f"{source}.bias")
            for target, source in (
                ("attention.qkv", "attn.c_attn"),
                ("attention.dense", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            )
        ),
    ),
    ignore=(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",),
    optional_prefixes=("transformer.",),  # the original gpt2 checkpoints have no prefix
)

MODEL_TYPES = {"gpt2": "GPTForCausalLM"}


def translate(hf: HFConfig) -> dict:
    if hf.get("scale_attn_by_inverse_layer_idx", default=False):
        raise hf.unsupported("scale_attn_by_inverse_layer_idx", "attention scaled per layer")
    if not hf.get("scale_attn_weights", default=True):
        raise hf.unsupported("scale_attn_weights", "unscaled attention")
    hidden = hf.require("n_embd", "hidden_size")
    return {
        **sizes(
            hf,
            MODEL_TYPES[hf.model_type],
            hidden=("n_embd", "hidden_size"),
            layers=("n_layer",),
            heads=("n_head",),
            positions=("n_positions",),
        ),
        **activation(hf.get("activation_function", default="gelu_new")),
        "intermediate_size": hf.get("n_inner", default=4 * hidden),
        "norm_epsilon": float(hf.get("layer_norm_epsilon", default=1e-5)),
        "position_embedding_type": "learned_absolute",
        "bias": True,
    }


ARCHITECTURE = HFArchitecture(MODEL_TYPES, TABLE, translate, tied_default=True)
