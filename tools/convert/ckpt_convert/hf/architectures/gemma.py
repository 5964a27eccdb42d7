"""Gemma 1, 2 and 3 (text): LLaMA's linears, norm weights stored as 1 + w, Gemma 2/3's extra norms and fields.

As TensorRT-LLM's Gemma converter writes them: every RMSNorm weight (q/k norms included) is stored as
``1 + w`` (the executors compute a plain RMSNorm); ``post_attention_layernorm`` becomes ``post_layernorm``,
the MLP's norm in Gemma 1 and the attention output's in Gemma 2/3. The embedding scale (x sqrt(hidden)) comes
with the architecture. The local:global layer pattern of Gemma 2/3 is written as ``sliding_window`` +
``_sliding_window_pattern`` (TensorRT-LLM reads both for Gemma 3; for Gemma 2 they are ours).
"""

from __future__ import annotations

import numpy as np

from ckptfmt import CheckpointError, ModelSpec
from ckptfmt.names import K_NORM, LAYER, LN_F, Q_NORM

from ...rules import Rule, Table
from ..hf_config import HFConfig
from . import llama
from .base import HFArchitecture, activation, sizes

L = "model.layers.{i}."


def plus_one(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """A Gemma norm weight ``w`` -> ``1 + w``, computed in float32 (what the model multiplies by)."""
    (a,) = arrays
    return a.astype(np.float32) + np.float32(1.0)


NORMS = (
    (LN_F, "model.norm"),
    (LAYER + "input_layernorm", L + "input_layernorm"),
    (LAYER + "post_layernorm", L + "post_attention_layernorm"),
    (LAYER + "pre_feedforward_layernorm", L + "pre_feedforward_layernorm"),
    (LAYER + "post_feedforward_layernorm", L + "post_feedforward_layernorm"),
    (LAYER + Q_NORM, L + "self_attn.q_norm"),
    (LAYER + K_NORM, L + "self_attn.k_norm"),
)
TABLE = Table(
    rules=(
        *(r for r in llama.TABLE.rules if "layernorm" not in r.target and not r.target.startswith(LN_F)),
        *(Rule(f"{target}.weight", f"{source}.weight", plus_one) for target, source in NORMS),
    ),
    ignore=llama.TABLE.ignore,
)

MODEL_TYPES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
LAYER_TYPES = ("sliding_attention", "full_attention")
DEFAULT_PATTERN = {"gemma2": 2, "gemma3_text": 6}  # transformers' defaults when layer_types is absent


def translate(hf: HFConfig) -> dict:
    for field in ("attention_bias", "use_bidirectional_attention"):
        if hf.get(field, default=False):
            raise hf.unsupported(field, "Gemma with q/k/v/o biases or bidirectional attention")
    heads, hidden = hf.require("num_attention_heads"), hf.require("hidden_size")
    act = hf.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    if hf.model_type == "gemma" and act == "gelu":  # Gemma 1's legacy value: transformers computes the tanh form
        act = "gelu_pytorch_tanh"
    out = {
        **sizes(hf, MODEL_TYPES[hf.model_type]),
        "num_key_value_heads": hf.get("num_key_value_heads", default=heads),
        "head_size": hf.get("head_dim", default=hidden // heads),
        **activation(act),
        "intermediate_size": hf.require("intermediate_size"),
        "norm_epsilon": hf.require("rms_norm_eps", kind=float),
        "position_embedding_type": "rope_gpt_neox",
        "bias": False,
        "attn_bias": False,  # TensorRT-LLM's Gemma fields
        "mlp_bias": False,
        "inter_layernorms": hf.model_type != "gemma",
        **rotary(hf),
    }
    if hf.model_type == "gemma":
        return out
    return {
        **out,
        "query_pre_attn_scalar": hf.get("query_pre_attn_scalar", default=out["head_size"]),
        # transformers' Gemma 3 carries attn_logit_softcapping in its config but never applies it
        "attn_logit_softcapping": hf.get("attn_logit_softcapping") if hf.model_type == "gemma2" else None,
        "final_logit_softcapping": hf.get("final_logit_softcapping"),
        **window(hf),
    }


def rotary(hf: HFConfig) -> dict:
    """Gemma 3: the global layers' base and scaling, and the local layers' base (transformers 5 keeps them per
    layer type in ``rope_parameters``, 4.x in ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq``)."""
    if hf.model_type != "gemma3_text":
        return {"rotary_base": hf.rope_theta(), "rotary_scaling": hf.rope_scaling()}
    params = hf.get("rope_parameters", default={})
    if isinstance(params, dict) and "full_attention" in params:
        full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
        if not isinstance(full, dict) or not isinstance(local, dict):
            raise CheckpointError(f"{hf.path}: rope_parameters: each layer type's entry must be an object")
        if hf.rope_scaling(local) is not None:
            raise hf.unsupported("rope_parameters", "rope scaling on the local layers")
        return {
            "rotary_base": float(full.get("rope_theta", 1e6)),
            "rotary_scaling": hf.rope_scaling(full),
            "rope_local_base_freq": float(local.get("rope_theta", 10000.0)),
        }
    return {
        "rotary_base": hf.rope_theta(default=1e6),
        "rotary_scaling": hf.rope_scaling(),
        "rope_local_base_freq": float(hf.get("rope_local_base_freq", default=10000.0)),
    }


def window(hf: HFConfig) -> dict:
    """``sliding_window`` and ``_sliding_window_pattern`` (layer i global when (i + 1) % N == 0) from HF's
    ``layer_types`` (transformers 5) or its pattern; a layer order no such N describes is refused."""
    layers = hf.require("num_hidden_layers")
    declared = hf.get("_sliding_window_pattern", "sliding_window_pattern", default=DEFAULT_PATTERN[hf.model_type])
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise CheckpointError(f"{hf.path}: sliding_window_pattern must be a positive integer, got {declared!r}")
    types = hf.get("layer_types")
    if types is None:
        local = [bool((i + 1) % declared) for i in range(layers)]
    elif isinstance(types, list) and len(types) == layers and all(t in LAYER_TYPES for t in types):
        local = [t == "sliding_attention" for t in types]
    else:
        raise CheckpointError(
            f"{hf.path}: layer_types must name {' or '.join(LAYER_TYPES)} for each of the {layers} layers"
        )
    size = hf.get("sliding_window")
    if not size or not any(local):
        return {}
    candidates = (declared, *range(1, layers + 2))
    pattern = next((p for p in candidates if local == [bool((i + 1) % p) for i in range(layers)]), None)
    if pattern is None:
        raise CheckpointError(
            f"{hf.path}: layer_types {types} are not local layers with every Nth one global, the one pattern "
            "the format describes"
        )
    return {"sliding_window": size, "_sliding_window_pattern": pattern}


ARCHITECTURE = HFArchitecture(MODEL_TYPES, TABLE, translate, tied_default=True)
