"""Small configs and checkpoints for the ckptfmt tests."""

import pytest

from ckptfmt import CheckpointConfig
from tests.random_checkpoint import random_checkpoint

OPT_EXAMPLE = {
    "architecture": "OPTForCausalLM",
    "dtype": "float16",
    "logits_dtype": "float32",
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_size": 768,
    "vocab_size": 50272,
    "position_embedding_type": "learned_absolute",
    "max_position_embeddings": 2048,
    "hidden_act": "relu",
    "quantization": {"use_weight_only": False, "weight_only_precision": "int8"},
    "mapping": {"world_size": 2, "tp_size": 2},
    "use_parallel_embedding": False,
    "embedding_sharding_dim": 0,
    "share_embedding_table": False,
    "do_layer_norm_before": True,
    "use_prompt_tuning": False,
}


def llama_dict(tp: int = 1, pp: int = 1, **over) -> dict:
    d = {
        "architecture": "LlamaForCausalLM",
        "dtype": "float16",
        "vocab_size": 101,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "intermediate_size": 96,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": 128,
        "rotary_base": 10000.0,
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
    }
    d.update(over)
    return d


@pytest.fixture
def llama_ckpt(tmp_path):
    cfg = CheckpointConfig.from_dict(llama_dict(tp=2, pp=1))
    return random_checkpoint(tmp_path / "ckpt", cfg)
