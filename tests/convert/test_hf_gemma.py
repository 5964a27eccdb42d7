"""ckpt-convert hf for Gemma 1/2/3: TensorRT-LLM's names and fields, norm weights as 1 + w, bad input refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from ckptfmt import RankFileReader, load_config, model_spec  # noqa: E402
from tests.convert.conftest import run_cli  # noqa: E402
from tests.convert.test_hf_errors import assert_clean_failure  # noqa: E402
from tests.eval.test_gemma import make_gemma_hf  # noqa: E402
from tests.tiny_models import hf_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma-hf")
    return {name: make_gemma_hf(name, root / name) for name in ("gemma", "gemma2", "gemma3")}


def convert(model_dir, out, capsys, *extra):
    return run_cli("hf", "--model_dir", model_dir, "--output_dir", out, "--quiet", *extra, capsys=capsys)


def tensors(ckpt, rank: int = 0) -> dict[str, np.ndarray]:
    with RankFileReader(ckpt / f"rank{rank}.safetensors") as reader:
        return {n: np.array(reader[n]) for n in reader.entries}


def edited(src, dst, **fields):
    """A copy of HF directory ``src`` with config.json fields replaced (None removes one)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(fields)
    (dst / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return dst


def test_gemma2_config_has_trtllm_fields(hf, tmp_path, capsys):
    rc, _, err = convert(hf["gemma2"], tmp_path / "c", capsys)
    assert rc == 0, err
    raw = json.loads((tmp_path / "c" / "config.json").read_text())
    assert raw["architecture"] == "Gemma2ForCausalLM" and raw["head_size"] == 24
    assert raw["query_pre_attn_scalar"] == 20 and raw["inter_layernorms"] is True
    assert (raw["attn_logit_softcapping"], raw["final_logit_softcapping"]) == (5.0, 3.0)
    assert (raw["sliding_window"], raw["_sliding_window_pattern"]) == (6, 2)
    assert raw["hidden_act"] == "gelu_pytorch_tanh"
    spec = model_spec(load_config(tmp_path / "c"))
    assert [spec.local_layer(i) for i in range(2)] == [True, False]


def test_gemma3_rope_per_layer_type(hf, tmp_path, capsys):
    rc, _, err = convert(hf["gemma3"], tmp_path / "c", capsys)
    assert rc == 0, err
    raw = json.loads((tmp_path / "c" / "config.json").read_text())
    assert raw["architecture"] == "Gemma3ForCausalLM"
    assert (raw["rotary_base"], raw["rope_local_base_freq"]) == (10000.0, 100.0)
    assert raw["rotary_scaling"]["type"] == "linear" and raw["rotary_scaling"]["factor"] == 2.0
    assert raw["_sliding_window_pattern"] == 3 and "attn_logit_softcapping" not in raw  # transformers ignores it


@pytest.mark.parametrize("name", ["gemma", "gemma2", "gemma3"])
def test_norms_are_stored_as_one_plus_w_and_linears_as_llama(hf, tmp_path, capsys, name):
    rc, _, err = convert(hf[name], tmp_path / "c", capsys)
    assert rc == 0, err
    ours, src = tensors(tmp_path / "c"), hf_state_dict(hf[name])
    norms = {
        "transformer.ln_f.weight": "model.norm.weight",
        "transformer.layers.1.input_layernorm.weight": "model.layers.1.input_layernorm.weight",
        "transformer.layers.1.post_layernorm.weight": "model.layers.1.post_attention_layernorm.weight",
    }
    if name != "gemma":
        norms["transformer.layers.1.pre_feedforward_layernorm.weight"] = (
            "model.layers.1.pre_feedforward_layernorm.weight"
        )
        norms["transformer.layers.1.post_feedforward_layernorm.weight"] = (
            "model.layers.1.post_feedforward_layernorm.weight"
        )
    if name == "gemma3":
        norms["transformer.layers.1.attention.q_layernorm.weight"] = "model.layers.1.self_attn.q_norm.weight"
        norms["transformer.layers.1.attention.k_layernorm.weight"] = "model.layers.1.self_attn.k_norm.weight"
    for target, source in norms.items():
        np.testing.assert_array_equal(ours[target], src[source] + np.float32(1.0), err_msg=target)
    qkv = [src[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"]
    np.testing.assert_array_equal(ours["transformer.layers.0.attention.qkv.weight"], np.concatenate(qkv))
    fc = src["model.layers.0.mlp.gate_proj.weight"]  # the activated branch
    np.testing.assert_array_equal(ours["transformer.layers.0.mlp.fc.weight"], fc)
    np.testing.assert_array_equal(ours["lm_head.weight"], src["model.embed_tokens.weight"])  # tied
    assert ("transformer.layers.0.attention.q_layernorm.weight" in ours) == (name == "gemma3")
    assert ("transformer.layers.0.pre_feedforward_layernorm.weight" in ours) == (name != "gemma")


def test_gemma1_legacy_gelu_is_the_tanh_form(hf, tmp_path, capsys):
    model = edited(hf["gemma"], tmp_path / "m", hidden_act="gelu")
    rc, _, err = convert(model, tmp_path / "c", capsys)
    assert rc == 0, err
    config = load_config(tmp_path / "c")
    assert model_spec(config).activation == "gelu_tanh" and "gelu_approximate" not in config.extra


@pytest.mark.parametrize(
    ("name", "fields", "fragment"),
    [
        ("gemma2", {"attention_bias": True}, "attention_bias=True is not supported"),
        ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True is not supported"),
        (
            "gemma2",
            {"layer_types": ["full_attention", "sliding_attention"]},
            "are not local layers with every Nth one global",
        ),
        ("gemma2", {"layer_types": ["sliding_attention"]}, "layer_types must name"),
        ("gemma2", {"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types must name"),
        (
            "gemma3",
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                }
            },
            "rope scaling on the local layers",
        ),
        ("gemma3", {"rope_parameters": {"full_attention": [1]}}, "rope_parameters: each layer type's entry"),
        ("gemma2", {"query_pre_attn_scalar": -4}, "query_pre_attn_scalar: must lie in"),
        ("gemma2", {"final_logit_softcapping": "big"}, "final_logit_softcapping: must be"),
        ("gemma3", {"sliding_window_pattern": 0, "_sliding_window_pattern": 0, "layer_types": None}, "pattern"),
    ],
)
def test_bad_config_is_one_line(hf, tmp_path, capsys, name, fields, fragment):
    model = edited(hf[name], tmp_path / "m", **fields)
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", fragment)


def test_missing_extra_norm_is_one_line(hf, tmp_path, capsys):
    """A Gemma 2 directory whose pre_feedforward_layernorm tensors are gone: the missing tensor is named."""
    from safetensors.numpy import load_file, save_file

    model = edited(hf["gemma2"], tmp_path / "m")
    weights = load_file(model / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "pre_feedforward" not in k}, model / "model.safetensors")
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "pre_feedforward_layernorm")
