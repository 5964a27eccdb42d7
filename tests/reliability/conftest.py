"""Fixtures of the reliability tests: LLaMA-layout HF directories written with numpy + safetensors only (no torch or
transformers import: the tests stay fast on a loaded machine), copied per test so that a test may break its copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

SLOW_LAYERS = 300
HIDDEN, FFN, KV, VOCAB = 64, 128, 32, 250


def make_llama(path: Path, layers: int = 2, seed: int = 0) -> Path:
    """A LLaMA (GQA: 4 heads, 2 kv heads of 16) as transformers writes it: config.json + model.safetensors."""
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN), np.float32),
        "lm_head.weight": rng.standard_normal((VOCAB, HIDDEN), np.float32),
        "model.norm.weight": np.ones(HIDDEN, np.float32),
    }
    shapes = {
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.k_proj.weight": (KV, HIDDEN),
        "self_attn.v_proj.weight": (KV, HIDDEN),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (FFN, HIDDEN),
        "mlp.up_proj.weight": (FFN, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, FFN),
    }
    for i in range(layers):
        tensors.update({f"model.layers.{i}.{n}": rng.standard_normal(s, np.float32) for n, s in shapes.items()})
    save_file(tensors, path / "model.safetensors")
    (path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}')
    return path


def shard(model: Path, shards: int = 3) -> Path:
    """Split ``model.safetensors`` into ``shards`` files plus ``model.safetensors.index.json``."""
    from safetensors.numpy import load_file

    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names, weight_map = sorted(tensors), {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in names[i::shards]}, model / file)
        weight_map.update(dict.fromkeys(names[i::shards], file))
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("rel") / "llama")


@pytest.fixture
def model(tiny_llama, tmp_path) -> Path:
    """A private copy of the tiny LLaMA (with a tokenizer.json) that the test may break."""
    path = tmp_path / "model"
    shutil.copytree(tiny_llama, path)
    return path


@pytest.fixture(scope="session")
def slow_llama(tmp_path_factory) -> Path:
    """SLOW_LAYERS layers: thousands of small tensors, seconds of work, a few MB."""
    return make_llama(tmp_path_factory.mktemp("rel") / "slow", layers=SLOW_LAYERS)


@pytest.fixture
def slow_model(slow_llama, tmp_path) -> Path:
    """A private copy of the slow model (the test may truncate or edit its weights)."""
    path = tmp_path / "slow"
    shutil.copytree(slow_llama, path)
    return path
