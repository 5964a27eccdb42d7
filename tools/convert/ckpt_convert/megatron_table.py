"""The Megatron-core GPT mapping table: canonical checkpoint tensor <- normalized Megatron tensor(s).

One table serves every variant (GPT/LLaMA families, gated or not, biases or not, learned or rotary
positions): rules the config does not need are simply never asked for.
"""

from __future__ import annotations

import numpy as np

from ckptfmt import ModelSpec

from .rules import Rule, Table
from .transforms import identity, ungroup_qkv_per_kv_head

L = "decoder.layers.{i}."
T = "transformer.layers.{i}."


def fc1_activated(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """``linear_fc1`` -> ``mlp.fc``: the whole tensor, or for gated MLPs its first half (the gate)."""
    (a,) = arrays
    return a[: a.shape[0] // 2] if spec.gated_mlp else a


def fc1_multiplier(arrays: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """``linear_fc1`` -> ``mlp.gate``: the second half of a gated MLP's fused rows (HF ``up_proj``)."""
    (a,) = arrays
    return a[a.shape[0] // 2 :]


def _linear(target: str, source: str, transform=identity) -> tuple[Rule, ...]:
    return (
        Rule(f"{T}{target}.weight", f"{L}{source}.weight", transform),
        Rule(f"{T}{target}.bias", f"{L}{source}.bias", transform),
    )


def _norm(target: str, source: str) -> tuple[Rule, ...]:
    return (Rule(f"{target}.weight", f"{source}_weight"), Rule(f"{target}.bias", f"{source}_bias"))


MEGATRON_GPT = Table(
    rules=(
        Rule("transformer.vocab_embedding.weight", "embedding.word_embeddings.weight"),
        Rule("transformer.position_embedding.weight", "embedding.position_embeddings.weight"),
        *_norm(f"{T}input_layernorm", f"{L}self_attention.linear_qkv.layer_norm"),
        *_linear("attention.qkv", "self_attention.linear_qkv", ungroup_qkv_per_kv_head),
        *_linear("attention.dense", "self_attention.linear_proj"),
        *_norm(f"{T}post_layernorm", f"{L}mlp.linear_fc1.layer_norm"),
        *_linear("mlp.fc", "mlp.linear_fc1", fc1_activated),
        *_linear("mlp.gate", "mlp.linear_fc1", fc1_multiplier),
        *_linear("mlp.proj", "mlp.linear_fc2"),
        Rule("transformer.ln_f.weight", "decoder.final_layernorm.weight"),
        Rule("transformer.ln_f.bias", "decoder.final_layernorm.bias"),
        Rule("lm_head.weight", "output_layer.weight", fallback="embedding.word_embeddings.weight"),
    ),
)
