"""The declared model semantics: field types, the GELU meaning, the support table and its refusals."""

import json
import re

import pytest

from ckptfmt import CheckpointConfig, CheckpointError, model_spec
from ckptfmt.cli import main
from ckptfmt.semantics import BUILDER, FUSED, TORCH, check_support, rotary_inv_freq, support_rows
from tests.random_checkpoint import random_checkpoint

from .conftest import llama_dict


def spec(**over):
    return model_spec(CheckpointConfig.from_dict(llama_dict(**over)).check())


@pytest.mark.parametrize(
    "over, function",
    [
        ({"hidden_act": "gelu"}, "gelu_tanh"),  # TensorRT-LLM's meaning
        ({"hidden_act": "gelu", "gelu_approximate": "none"}, "gelu_erf"),
        ({"hidden_act": "geglu", "gelu_approximate": "none"}, "gelu_erf"),
        ({"hidden_act": "gelu_new"}, "gelu_tanh"),
        ({"hidden_act": "openai-gelu"}, "gelu_tanh"),
        ({"hidden_act": "swish"}, "silu"),
    ],
)
def test_activation_meaning(over, function):
    assert spec(**over).activation == function


@pytest.mark.parametrize(
    "over, problem",
    [
        ({"gelu_approximate": "erf"}, "gelu_approximate: must be one of ['tanh', 'none']"),
        ({"hidden_act": "gelu_new", "gelu_approximate": "none"}, "gelu_approximate: 'none' contradicts"),
        ({"bias": "yes"}, "bias: must be boolean or null"),
        ({"rotary_emb_base": "big"}, "rotary_emb_base: must be integer or number or null"),
        ({"rotary_scaling": [2.0]}, "rotary_scaling: must be an object or null"),
    ],
)
def test_declared_field_types_are_checked(over, problem):
    problems = CheckpointConfig.from_dict(llama_dict(**over)).problems()
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    "over, field, who",
    [
        ({"hidden_act": "squared-relu"}, "hidden_act", []),
        ({"residual_multiplier": 0.5}, "unimplemented fields", []),
        ({"final_logit_softcapping": 30.0}, "final_logit_softcapping", [BUILDER, FUSED, TORCH]),
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping", [BUILDER, FUSED, TORCH]),
        ({"rotary_scaling": {"type": "dynamic", "factor": 2.0}}, "rotary_scaling", []),
        ({"position_embedding_type": "alibi"}, "position_embedding_type", [BUILDER, FUSED, TORCH]),
        ({"use_prompt_tuning": True}, "use_prompt_tuning", [FUSED, TORCH]),
        ({"sliding_window": 16}, "sliding_window", [BUILDER, FUSED, TORCH]),
        ({"query_pre_attn_scalar": 32}, "query_pre_attn_scalar", [BUILDER, FUSED, TORCH]),
        ({"rope_local_base_freq": 1e4}, "rope_local_base_freq", [BUILDER, FUSED, TORCH]),
    ],
)
def test_unsupported_values_are_refused_naming_field_and_supporters(over, field, who):
    s = spec(**over)
    row = {name: executors for name, _, executors in support_rows(s)}
    assert row[field] == who
    for executor in {TORCH, FUSED, BUILDER} - set(who):
        with pytest.raises(CheckpointError, match=rf"^config\.json: {field} .* is not supported by"):
            check_support(s, executor)


def test_neutral_values_of_unimplemented_fields_pass():
    check_support(spec(final_logit_softcapping=None, residual_mlp=False, logits_scaling=1.0), TORCH)


def test_llama3_frequencies_keep_the_high_ones_and_scale_the_low_ones():
    scaling = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64}
    plain, scaled = rotary_inv_freq(16, 10000.0, None), rotary_inv_freq(16, 10000.0, scaling)
    assert scaled[0] == plain[0] and abs(scaled[-1] * 8 - plain[-1]) < 1e-9
    assert (rotary_inv_freq(16, 10000.0, {"type": "linear", "factor": 4.0}) * 4 == plain).all()


def test_inspect_prints_the_row(tmp_path, capsys):
    d = random_checkpoint(tmp_path / "c", CheckpointConfig.from_dict(llama_dict(use_prompt_tuning=True)))
    assert main(["inspect", str(d), "--json"]) == 0
    features = {f["field"]: f for f in json.loads(capsys.readouterr().out)["features"]}
    assert features["use_prompt_tuning"] == {
        "field": "use_prompt_tuning",
        "value": "true",
        "executors": ["fused", "torch"],
    }
    assert main(["inspect", str(d)]) == 0
    assert re.search(r"use_prompt_tuning +true: fused, torch", capsys.readouterr().out)
