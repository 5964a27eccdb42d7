import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptfmt import CheckpointConfig, CheckpointError, load_config

from .conftest import OPT_EXAMPLE, llama_dict


def test_documented_opt_example_loads_as_written(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OPT_EXAMPLE))
    cfg = load_config(tmp_path)
    assert cfg.architecture == "OPTForCausalLM" and cfg.mapping.tp_size == 2 and cfg.mapping.pp_size == 1
    assert cfg.num_key_value_heads is None and cfg.kv_heads == 12
    assert cfg.norm_epsilon == 1e-5 and cfg.quantization.weight_only is None
    assert cfg.get("do_layer_norm_before") is True
    # written back in the boolean-flag form with every default filled in
    out = cfg.to_dict()
    assert out["quantization"]["use_weight_only"] is False and "quant_algo" not in out["quantization"]
    assert out["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}


def test_world_size_derived_when_absent():
    cfg = CheckpointConfig.from_dict(llama_dict() | {"mapping": {"tp_size": 2, "pp_size": 2}})
    assert cfg.mapping.world_size == 4 and cfg.problems() == []


@pytest.mark.parametrize(
    ("algo", "expect"),
    [
        ({"quant_algo": "W8A16"}, ("int8", False, None)),
        ({"quant_algo": "W4A16"}, ("int4", False, None)),
        ({"quant_algo": "W4A16_AWQ", "group_size": 128}, ("int4", True, None)),
        ({"quant_algo": None, "kv_cache_quant_algo": "INT8"}, (None, False, "int8")),
        ({"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}, (None, False, "fp8")),
    ],
)
def test_quant_algo_spelling_normalized_and_written_back(algo, expect):
    cfg = CheckpointConfig.from_dict(llama_dict(quantization=algo))
    q = cfg.quantization
    assert (q.weight_only, q.per_group, q.kv_cache) == expect
    assert cfg.problems() == []
    written = cfg.to_dict()["quantization"]
    assert written["quant_algo"] == algo["quant_algo"]
    assert written.get("kv_cache_quant_algo") == algo.get("kv_cache_quant_algo")
    assert CheckpointConfig.from_dict(cfg.to_dict()) == cfg


def test_flag_and_algo_spellings_describe_the_same_mode():
    flags = CheckpointConfig.from_dict(
        llama_dict(
            quantization={
                "use_weight_only": True,
                "weight_only_precision": "int4",
                "per_group": True,
                "group_size": 128,
            }
        )
    )
    algo = CheckpointConfig.from_dict(llama_dict(quantization={"quant_algo": "W4A16_AWQ", "group_size": 128}))
    for field in ("weight_only", "per_group", "group_size", "kv_cache", "quant_algo"):
        assert getattr(flags.quantization, field) == getattr(algo.quantization, field), field
    assert flags.to_dict()["quantization"]["use_weight_only"] is True


def test_every_problem_reported_with_field_path():
    bad = llama_dict(tp=3, vocab_size="big", hidden_act=None, architecture="BertModel")
    del bad["hidden_size"]
    bad["mapping"]["world_size"] = 5
    problems = CheckpointConfig.from_dict(bad).problems()
    text = "\n".join(problems)
    assert "hidden_size: missing mandatory field" in text
    assert 'vocab_size: must be integer, got "big"' in text
    assert "hidden_act: must be string" in text
    assert "architecture: unsupported 'BertModel' (supported: " in text and "LlamaForCausalLM" in text
    assert "mapping.world_size: must equal tp_size * pp_size (3 * 1 = 3), got 5" in text


def test_tp_must_divide_heads():
    problems = CheckpointConfig.from_dict(
        llama_dict(tp=5, num_attention_heads=12, num_key_value_heads=12, hidden_size=96, intermediate_size=100)
    ).problems()
    assert "mapping.tp_size: must divide num_attention_heads (12)" in problems


def test_kv_heads_replicated_when_fewer_than_ranks():
    cfg = CheckpointConfig.from_dict(llama_dict(tp=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=64))
    assert cfg.problems() == []
    cfg = CheckpointConfig.from_dict(llama_dict(tp=4, num_attention_heads=12, num_key_value_heads=3, hidden_size=96))
    assert any("num_key_value_heads (3)" in p for p in cfg.problems())


def test_bool_is_not_an_int():
    problems = CheckpointConfig.from_dict(llama_dict(num_hidden_layers=True)).problems()
    assert "num_hidden_layers: must be integer, got true" in problems


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "missing"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
    ],
)
def test_load_config_bad_files(tmp_path, content, message):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError) as err:
        load_config(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_config_raises_all_problems(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(llama_dict(dtype="float8", hidden_act=3)))
    with pytest.raises(CheckpointError) as err:
        load_config(tmp_path)
    assert len(err.value.problems) == 2 and "(and 1 more)" in str(err.value)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in llama_dict() and k not in ("quantization",)),
        json_values,
        max_size=5,
    ),
    qextra=st.dictionaries(
        st.sampled_from(["exclude_modules", "has_zero_point", "producer_note"]), json_values, max_size=2
    ),
    algo_style=st.booleans(),
)
def test_save_load_is_identity_including_unknown_fields(tmp_path_factory, extra, qextra, algo_style):
    src = llama_dict(**extra)
    src["quantization"] = {"quant_algo": "W8A16", **qextra} if algo_style else {"use_weight_only": True, **qextra}
    cfg = CheckpointConfig.from_dict(src)
    d = tmp_path_factory.mktemp("cfg")
    cfg.save(d)
    again = load_config(d, check=False)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    for k, v in extra.items():
        assert again.to_dict()[k] == v
    for k, v in qextra.items():
        assert again.to_dict()["quantization"][k] == v


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("fp16", "float16"),
        ("float16", "float16"),
        ("half", "float16"),
        ("FP16", "float16"),
        ("torch.float16", "float16"),
        ("bf16", "bfloat16"),
        ("bfloat16", "bfloat16"),
        ("fp32", "float32"),
        ("float32", "float32"),
        ("float", "float32"),
        ("auto", "auto"),
    ],
)
def test_canonical_dtype_accepts_usual_spellings(spelling, canonical):
    from ckptfmt.config import canonical_dtype

    assert canonical_dtype(spelling) == canonical


def test_canonical_dtype_names_what_it_accepts():
    from ckptfmt.config import canonical_dtype

    with pytest.raises(CheckpointError, match=r"dtype 'int8': not one of .*fp16.*bf16"):
        canonical_dtype("int8")
