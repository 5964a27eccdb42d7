"""Tiny checkpoints for builder tests: random tensors of the exact expected shapes, one config per layout."""

from __future__ import annotations

from ckptfmt.config import CheckpointConfig
from tests.random_checkpoint import random_checkpoint  # noqa: F401  (re-exported for the build tests)

BASE = {
    "vocab_size": 250,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    "norm_epsilon": 1e-5,
}

# one entry per layout the network distinguishes (architectures and their config-driven variants)
LAYOUTS: dict[str, dict] = {
    "llama-gqa": {
        "architecture": "LlamaForCausalLM",
        "hidden_act": "silu",
        "num_key_value_heads": 2,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": 10000.0,
    },
    "qwen2": {
        "architecture": "Qwen2ForCausalLM",
        "hidden_act": "silu",
        "num_key_value_heads": 2,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": 1000000.0,
    },
    "gpt2": {"architecture": "GPTForCausalLM", "hidden_act": "gelu_new", "position_embedding_type": "learned_absolute"},
    "opt-postnorm-proj": {
        "architecture": "OPTForCausalLM",
        "hidden_act": "relu",
        "do_layer_norm_before": False,
        "word_embed_proj_dim": 32,
        "position_embedding_type": "learned_absolute",
    },
    "gptneox": {
        "architecture": "GPTNeoXForCausalLM",
        "hidden_act": "gelu",
        "rotary_pct": 0.25,
        "position_embedding_type": "rope_gpt_neox",
        "use_parallel_residual": True,
    },
    "falcon-old": {
        "architecture": "FalconForCausalLM",
        "hidden_act": "gelu",
        "num_key_value_heads": 1,
        "position_embedding_type": "rope_gpt_neox",
        "parallel_attention": True,
        "new_decoder_architecture": False,
        "intermediate_size": 256,
    },
    "falcon-new": {
        "architecture": "FalconForCausalLM",
        "hidden_act": "gelu",
        "num_key_value_heads": 2,
        "position_embedding_type": "rope_gpt_neox",
        "new_decoder_architecture": True,
        "intermediate_size": 256,
    },
    "gptj-rope": {
        "architecture": "GPTForCausalLM",
        "hidden_act": "gelu_new",
        "position_embedding_type": "rope_gptj",
        "rotary_dim": 8,
    },
}


def layout_config(
    name: str,
    dtype: str = "float16",
    tp: int = 1,
    pp: int = 1,
    quant: str | None = None,
    group_size: int | None = None,
    **extra,
) -> CheckpointConfig:
    src = {
        **BASE,
        **LAYOUTS[name],
        "dtype": dtype,
        **extra,
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
    }
    if quant:
        src["quantization"] = {
            "use_weight_only": True,
            "weight_only_precision": quant,
            "per_group": bool(group_size),
            "group_size": group_size or 64,
        }
    return CheckpointConfig.from_dict(src).check()
