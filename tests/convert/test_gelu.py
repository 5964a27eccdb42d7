"""Which GELU a source computes reaches config.json: the format's ``gelu`` is the tanh approximation (TensorRT-LLM's);
a source computing the exact (erf) GELU is written as ``gelu`` plus ``gelu_approximate: "none"``."""

from __future__ import annotations

import pytest

from ckpt_convert.hf import model_config
from ckpt_convert.megatron_config import checkpoint_config, read_model

BASE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "normalization": "LayerNorm"}


@pytest.mark.parametrize(
    ("name", "overrides", "hidden_act", "approximate"),
    [
        ("gptneox", {}, "gelu", "none"),  # transformers' "gelu" is nn.functional.gelu (erf)
        ("falcon-old", {}, "gelu", "none"),
        ("gptneox", {"hidden_act": "gelu_new"}, "gelu_new", None),
        ("gptneox", {"hidden_act": "gelu_pytorch_tanh"}, "gelu_pytorch_tanh", None),
        ("gpt2", {}, "gelu_new", None),  # GPT-2's default: tanh
        ("gpt2", {"activation_function": "gelu"}, "gelu", "none"),
        ("llama-gqa", {}, "silu", None),
    ],
)
def test_hf_gelu_flavour(name, overrides, hidden_act, approximate, tiny_hf):
    config = model_config(tiny_hf(name, **overrides))[0]
    assert config.hidden_act == hidden_act
    assert config.get("gelu_approximate") == approximate


@pytest.mark.parametrize(
    ("hparams", "hidden_act", "approximate"),
    [
        ({"activation": "gelu"}, "gelu", "none"),  # Megatron's F.gelu
        ({}, "gelu", "none"),  # Megatron-core's default activation, fusion off by default
        ({"activation": "gelu", "bias_activation_fusion": False}, "gelu", "none"),
        ({"activation": "gelu", "bias_activation_fusion": True}, "gelu", None),  # fused kernel: tanh
        ({"activation": "gelu", "bias_gelu_fusion": True}, "gelu", None),
        ({"activation": "gelu", "openai_gelu": True}, "gelu", None),
        ({"activation": "openai-gelu"}, "gelu_new", None),
        ({"activation": "geglu"}, "geglu", "none"),
        ({"activation": "fast-geglu", "bias_activation_fusion": True}, "geglu", None),
        ({"activation": "swiglu", "bias_activation_fusion": False}, "swiglu", None),
    ],
)
def test_megatron_gelu_flavour(hparams, hidden_act, approximate):
    config = checkpoint_config(read_model({**BASE, **hparams}, "h.yaml"), 256, "h.yaml")
    assert config.hidden_act == hidden_act
    assert config.get("gelu_approximate") == approximate
