"""Source layouts (single/sharded safetensors, .bin, sharded .bin), transformers 4.x configs, workers."""

from __future__ import annotations

import json

import pytest

from ckpt_convert.hf import model_config
from ckptfmt import load_config
from tests.convert.conftest import convert_tiny
from tests.convert.test_hf_roundtrip import check_exact


def rank_digests(ckpt) -> dict:
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    return {name: entry["sha256"] for name, entry in manifest.items() if name.startswith("rank")}


@pytest.mark.parametrize("fmt", ["sharded", "bin", "sharded-bin"])
@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "opt", "falcon-new"])
def test_source_layouts_give_identical_rank_files(name, fmt, tiny_hf, tmp_path):
    single = convert_tiny(name, tmp_path / "single", tp=2, pp=2, hf_dir=tiny_hf(name))
    hf = tiny_hf(name, fmt=fmt)
    if fmt == "sharded":
        assert len(list(hf.glob("model-*.safetensors"))) > 1
    other = convert_tiny(name, tmp_path / fmt, tp=2, pp=2, hf_dir=hf)
    assert rank_digests(other) == rank_digests(single)


def test_gpt2_without_transformer_prefix(tiny_hf, reference, tmp_path):
    """The original gpt2 checkpoints name tensors h.0..., wte... without the ``transformer.`` prefix."""
    from safetensors.numpy import load_file, save_file

    hf = tiny_hf("gpt2")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((hf / "config.json").read_text())
    tensors = load_file(hf / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, bare / "model.safetensors")
    ckpt = convert_tiny("gpt2", tmp_path / "ckpt", tp=2, hf_dir=bare)
    check_exact(ckpt, reference(hf), "float32")


def as_transformers4(config: dict) -> dict:
    """The same config as transformers 4.x writes it: torch_dtype, rope settings at the top level."""
    out = {k: v for k, v in config.items() if k not in ("dtype", "rope_parameters")}
    out["torch_dtype"] = config["dtype"]
    rope = dict(config.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", None)
    if config["model_type"] == "gpt_neox":
        out["rotary_emb_base"] = theta
        out["rotary_pct"] = rope.pop("partial_rotary_factor", 1.0)
    elif theta is not None:
        out["rope_theta"] = theta
    if rope.get("rope_type", "default") != "default":
        out["rope_scaling"] = rope
    return out


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("llama-gqa", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}}),
        ("qwen2", {}),
        ("gptneox", {}),
        ("falcon-new", {}),
    ],
)
def test_transformers4_config_translates_the_same(name, overrides, tiny_hf, tmp_path):
    hf = tiny_hf(name, **overrides)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps(as_transformers4(json.loads((hf / "config.json").read_text()))))
    (old / "model.safetensors").symlink_to(hf / "model.safetensors")
    new_config, _, _ = model_config(hf)
    old_config, _, _ = model_config(old)
    assert old_config.to_dict() == new_config.to_dict()


def test_rope_settings_are_carried(tiny_hf, tmp_path):
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
    ckpt = convert_tiny("llama-gqa", tmp_path / "ckpt", hf_dir=tiny_hf("llama-gqa", rope_parameters=rope))
    config = load_config(ckpt)
    assert config.get("rotary_base") == 500000.0
    assert config.get("rotary_scaling")["type"] == "linear" and config.get("rotary_scaling")["factor"] == 2.0


def test_model_specific_fields(tiny_hf):
    fields = {
        name: model_config(tiny_hf(name))[0]
        for name in ("gptneox", "falcon-old", "falcon-new", "opt-postnorm-proj", "qwen2", "llama-tied")
    }
    assert fields["gptneox"].get("rotary_pct") == 0.25 and fields["gptneox"].get("use_parallel_residual") is True
    assert fields["falcon-old"].kv_heads == 1 and fields["falcon-old"].get("parallel_attention") is True
    assert fields["falcon-new"].kv_heads == 2 and fields["falcon-new"].get("new_decoder_architecture") is True
    assert fields["opt-postnorm-proj"].get("do_layer_norm_before") is False
    assert fields["opt-postnorm-proj"].get("word_embed_proj_dim") == 32
    assert fields["qwen2"].get("qkv_bias") is True and fields["qwen2"].get("bias") is False
    assert fields["llama-tied"].kv_heads == 1 and fields["llama-tied"].architecture == "LlamaForCausalLM"


@pytest.mark.parametrize("tp,pp", [(2, 1), (2, 2)])
def test_workers_give_identical_files(tp, pp, tiny_hf, tmp_path):
    hf = tiny_hf("qwen2")
    one = convert_tiny("qwen2", tmp_path / "one", tp=tp, pp=pp, hf_dir=hf)
    many = convert_tiny("qwen2", tmp_path / "many", tp=tp, pp=pp, hf_dir=hf, workers=4)
    assert rank_digests(many) == rank_digests(one)
    assert (many / "config.json").read_text() == (one / "config.json").read_text()


@pytest.mark.parametrize("fmt", ["bin", "sharded"])
def test_bfloat16_source_layouts(fmt, tiny_hf, reference, tmp_path):
    hf = tiny_hf("qwen2", dtype="bfloat16", fmt=fmt)
    ckpt = convert_tiny("qwen2", tmp_path / "ckpt", tp=2, pp=2, dtype="auto", hf_dir=hf)
    check_exact(ckpt, reference(hf), "bfloat16")


def test_tokenizer_files_are_carried_into_the_checkpoint(tmp_path):
    """The output holds the model's tokenizer under tokenizer/, listed in the manifest, loadable as is."""
    import shutil

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from ckptfmt import validate_checkpoint
    from tests.tiny_models import convert_tiny, make_tiny_hf

    hf = make_tiny_hf("llama-gqa", tmp_path / "hf")
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", "the", "cat", "sat"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(hf)
    out = convert_tiny("llama-gqa", tmp_path / "ckpt", hf_dir=hf)
    carried = sorted(p.name for p in (out / "tokenizer").iterdir())
    assert "tokenizer.json" in carried and "tokenizer_config.json" in carried
    assert validate_checkpoint(out) == ([], [])
    shutil.rmtree(hf)  # the checkpoint alone is enough
    again = transformers.AutoTokenizer.from_pretrained(out / "tokenizer")
    assert again("the cat sat")["input_ids"] == [2, 3, 4] and again.eos_token_id == 1
