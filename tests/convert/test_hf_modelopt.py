"""Format compatibility with NVIDIA ModelOpt 0.47's ``export_tensorrt_llm_checkpoint`` (fixtures in modelopt/).

Our output with ``--use_parallel_embedding`` must hold exactly the tensors ModelOpt wrote for the same
model: names, shapes, dtypes and bytes (sha256), per rank file. Configs are compared on the fields
ModelOpt's fallback path (no tensorrt_llm installed) gets right; the intentional differences are listed
in ``KNOWN_CONFIG_DIFFERENCES`` and in docs/convert.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ckptfmt import CheckpointConfig, RankFileReader, load_config
from tests.convert.conftest import convert_tiny

FIXTURES = Path(__file__).resolve().parent / "modelopt"
MODELS = ["llama-gqa", "qwen2", "gpt2"]
PARALLEL = [(1, 1), (2, 1), (1, 2)]

COMPARED_FIELDS = (
    "dtype",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_heads",
    "hidden_size",
    "head_size",
    "ffn_size",
    "norm_epsilon",
    "vocab_size",
    "max_position_embeddings",
    "use_parallel_embedding",
    "embedding_sharding_dim",
    "share_embedding_table",
    "mapping",
)
# Intentional differences, (model, field) -> (ModelOpt's value, ours); None: field absent. Checked below.
KNOWN_CONFIG_DIFFERENCES = {
    ("*", "logits_dtype"): ("float16", "float32"),  # we keep TensorRT-LLM's default
    ("gpt2", "architecture"): ("GPT2LMHeadModel", "GPTForCausalLM"),  # TensorRT-LLM's name for GPT-2
    ("gpt2", "hidden_act"): ("gelu", "gelu_new"),  # HF's name, unchanged (both the tanh approximation)
    ("gpt2", "position_embedding_type"): ("rope_gpt_neox", "learned_absolute"),  # ModelOpt fallback bug
    ("qwen2", "qkv_bias"): (None, True),  # ModelOpt writes bias false and no qkv-only flag
    ("llama-gqa", "rotary_base"): (None, 10000.0),  # its fallback reads only a top-level rope_theta
    ("qwen2", "rotary_base"): (None, 10000.0),
}


def tensor_summary(ckpt: Path) -> dict:
    out = {}
    for path in sorted(ckpt.glob("rank*.safetensors")):
        with RankFileReader(path) as reader:
            out[path.name] = {
                name: {
                    "dtype": str(reader.spec(name)[0]),
                    "shape": list(reader.spec(name)[1]),
                    "sha256": hashlib.sha256(reader[name].tobytes()).hexdigest(),
                }
                for name in sorted(reader.keys())  # noqa: SIM118
            }
    return out


@pytest.mark.parametrize("tp,pp", PARALLEL)
@pytest.mark.parametrize("name", MODELS)
def test_tensors_match_modelopt_export(name, tp, pp, tmp_path):
    reference = FIXTURES / name / f"tp{tp}pp{pp}"
    ckpt = convert_tiny(
        name,
        tmp_path / "ckpt",
        tp=tp,
        pp=pp,
        dtype="float16",
        hf_dir=FIXTURES / name / "hf",
        use_parallel_embedding=True,
    )
    assert tensor_summary(ckpt) == json.loads((reference / "tensors.json").read_text())

    theirs = CheckpointConfig.from_dict(json.loads((reference / "config.json").read_text()))
    ours = load_config(ckpt)
    for field in COMPARED_FIELDS:
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.quantization.quant_algo is None and theirs.quantization.quant_algo is None
    if name != "gpt2":
        assert (ours.architecture, ours.hidden_act, ours.position_embedding_type) == (
            theirs.architecture,
            theirs.hidden_act,
            theirs.position_embedding_type,
        )
    assert ours.get("bias") == theirs.get("bias")


def test_fixture_versions_are_pinned():
    versions = json.loads((FIXTURES / "versions.json").read_text())
    assert versions["nvidia-modelopt"] == "0.47.0"
    assert "nvidia-modelopt==0.47.0" in (FIXTURES / "requirements.txt").read_text()


@pytest.mark.parametrize("name", MODELS)
def test_known_config_differences(name, tmp_path):
    theirs = json.loads((FIXTURES / name / "tp1pp1" / "config.json").read_text())
    ckpt = convert_tiny(
        name, tmp_path / "ckpt", dtype="float16", hf_dir=FIXTURES / name / "hf", use_parallel_embedding=True
    )
    ours = json.loads((ckpt / "config.json").read_text())
    for (model, field), (their_value, our_value) in KNOWN_CONFIG_DIFFERENCES.items():
        if model in ("*", name):
            assert (theirs.get(field), ours.get(field)) == (their_value, our_value), field
