"""Gemma 1/2/3 in ckptfmt: tensor names and shapes, the resolved spec, field checks, validate and inspect."""

from __future__ import annotations

import json
import math

import pytest

from ckptfmt import CheckpointConfig, expected_tensors, model_spec
from ckptfmt.cli import main
from ckptfmt.semantics import BUILDER, FUSED, TORCH, support_rows, unsupported_by
from ckptfmt.validate import validate_checkpoint
from tests.random_checkpoint import random_checkpoint

BASE = {
    "dtype": "float32",
    "vocab_size": 101,
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_size": 24,
    "hidden_act": "gelu_pytorch_tanh",
    "intermediate_size": 96,
    "position_embedding_type": "rope_gpt_neox",
    "max_position_embeddings": 128,
}
GEMMA2 = {
    "architecture": "Gemma2ForCausalLM",
    "query_pre_attn_scalar": 20,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "sliding_window": 8,
    "_sliding_window_pattern": 2,
}
GEMMA3 = {
    "architecture": "Gemma3ForCausalLM",
    "query_pre_attn_scalar": 24,
    "rotary_base": 1e6,
    "rope_local_base_freq": 1e4,
    "rotary_scaling": {"type": "linear", "factor": 8.0},
    "sliding_window": 8,
    "_sliding_window_pattern": 3,
}


def config(tp: int = 1, pp: int = 1, **over) -> CheckpointConfig:
    mapping = {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}
    return CheckpointConfig.from_dict({**BASE, "architecture": "GemmaForCausalLM", "mapping": mapping, **over}).check()


def layer_tensors(cfg: CheckpointConfig, rank: int = 0) -> dict[str, tuple]:
    return {
        n.removeprefix("transformer.layers.0."): s.shape
        for n, s in expected_tensors(cfg, rank).items()
        if n.startswith("transformer.layers.0.")
    }


def test_gemma1_is_llama_shaped_with_its_embedding_scale():
    cfg = config()
    assert set(layer_tensors(cfg)) == {
        "input_layernorm.weight",
        "post_layernorm.weight",
        "attention.qkv.weight",
        "attention.dense.weight",
        "mlp.fc.weight",
        "mlp.gate.weight",
        "mlp.proj.weight",
    }
    assert layer_tensors(cfg)["attention.qkv.weight"] == ((4 + 2) * 24, 64)  # head_size 24 != 64 / 4, MQA
    spec = model_spec(cfg)
    assert spec.embedding_scale == math.sqrt(64) and spec.gated_mlp and spec.activation == "gelu_tanh"
    assert spec.attn_out_norm is None and not spec.qk_norm and spec.attention_scale == 24**-0.5


def test_gemma2_adds_norms_on_the_sublayer_outputs():
    cfg = config(**GEMMA2)
    names = layer_tensors(cfg)
    for norm in ("input_layernorm", "post_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
        assert names[f"{norm}.weight"] == (64,)
    spec = model_spec(cfg)
    assert (spec.attn_norm, spec.attn_out_norm, spec.mlp_norm, spec.mlp_out_norm) == (
        "input_layernorm",
        "post_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    )
    assert spec.attention_scale == 20**-0.5
    assert (spec.attn_logit_softcapping, spec.final_logit_softcapping) == (50.0, 30.0)
    assert [spec.layer_window(i) for i in range(3)] == [8, None, 8]


def test_gemma3_qk_norms_are_per_head_and_replicated():
    for tp in (1, 2):
        names = layer_tensors(config(tp=tp, num_key_value_heads=2, **GEMMA3))
        assert names["attention.q_layernorm.weight"] == names["attention.k_layernorm.weight"] == (24,)
    spec = model_spec(config(**GEMMA3))
    assert spec.qk_norm and spec.query_pre_attn_scalar is None  # 24 == head_size: the plain scale
    assert [spec.local_layer(i) for i in range(6)] == [True, True, False, True, True, False]
    assert spec.layer_rotary(0) == (1e4, None)
    assert spec.layer_rotary(2) == (1e6, {"type": "linear", "factor": 8.0})


def test_pipeline_stages_keep_global_layer_indices():
    spec = model_spec(config(pp=2, **GEMMA3))
    assert config(pp=2, **GEMMA3).mapping.layers_of_rank(3, 1) == range(2, 3)
    assert not spec.local_layer(2)  # the second stage's only layer is the global one


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"query_pre_attn_scalar": 0}, "query_pre_attn_scalar: must lie in"),
        ({"attn_logit_softcapping": -1.0}, "attn_logit_softcapping: must lie in"),
        ({"final_logit_softcapping": "30"}, "final_logit_softcapping: must be"),
        ({"_sliding_window_pattern": 0}, "_sliding_window_pattern: must lie in"),
        ({"_sliding_window_pattern": 2.5}, "_sliding_window_pattern: must be"),
        ({"rope_local_base_freq": float("nan")}, "rope_local_base_freq: must lie in"),
    ],
)
def test_bad_fields_are_named(over, problem):
    problems = CheckpointConfig.from_dict({**BASE, **GEMMA2, **over}).problems()
    assert any(problem in p for p in problems), problems


def test_zero_caps_are_off():
    spec = model_spec(config(**{**GEMMA2, "attn_logit_softcapping": 0, "final_logit_softcapping": 0.0}))
    assert spec.attn_logit_softcapping is None and spec.final_logit_softcapping is None


@pytest.mark.parametrize("over", [{}, GEMMA2, GEMMA3])
def test_every_executor_computes_every_gemma(over):
    """Gemma 1 adds the embedding scale to LLaMA; Gemma 2 the caps, the query scalar and output norms; Gemma 3 the
    q/k norms and the local rotary base."""
    spec = model_spec(config(**over))
    assert unsupported_by(spec, TORCH) == unsupported_by(spec, BUILDER) == unsupported_by(spec, FUSED) == []


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2)])
def test_random_gemma3_checkpoint_validates(tmp_path, tp, pp):
    ckpt = random_checkpoint(tmp_path / "c", config(tp=tp, pp=pp, num_key_value_heads=2, **GEMMA3))
    problems, warnings = validate_checkpoint(ckpt)
    assert problems == [] and warnings == []


def retyped(ckpt, architecture: str):
    """``ckpt`` with config.json naming another architecture (its manifest dropped: unverified but valid)."""
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "architecture": architecture}))
    (ckpt / "manifest.json").unlink()
    return ckpt


def test_validate_names_missing_and_unexpected_norms(tmp_path):
    gemma3 = retyped(random_checkpoint(tmp_path / "c", config(**GEMMA3)), "Gemma2ForCausalLM")
    problems, warnings = validate_checkpoint(gemma3)
    assert problems == [], problems  # Gemma 2 has no q/k norms: the extra tensors are warnings
    assert any("attention.q_layernorm.weight" in w for w in warnings), warnings
    gemma2 = retyped(random_checkpoint(tmp_path / "d", config(**GEMMA2)), "GemmaForCausalLM")
    problems, _ = validate_checkpoint(gemma2)
    assert problems == []  # Gemma 1 reads fewer norms
    gemma1 = retyped(random_checkpoint(tmp_path / "e", config()), "Gemma3ForCausalLM")
    problems, _ = validate_checkpoint(gemma1)
    for name in ("attention.q_layernorm.weight", "pre_feedforward_layernorm.weight"):
        assert any(name in p and "missing" in p for p in problems), problems


def test_inspect_prints_gemma_rows(tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / "c", config(**GEMMA2))
    assert main(["inspect", str(ckpt), "--json"]) == 0
    rows = {f["field"]: (f["value"], f["executors"]) for f in json.loads(capsys.readouterr().out)["features"]}
    assert rows["sliding_window"] == ("8 positions, 1 global layer in 2", [BUILDER, FUSED, TORCH])
    assert rows["embedding scale"] == ("sqrt(hidden_size)", [BUILDER, FUSED, TORCH])
    assert rows["attn_logit_softcapping"] == ("50", [BUILDER, FUSED, TORCH])
    assert rows["inter_layernorms"] == ("true", [BUILDER, FUSED, TORCH])
    assert all(who == sorted((BUILDER, FUSED, TORCH)) for _, _, who in support_rows(model_spec(config())))
