"""Format compatibility: ``ckpt-convert hf --use_parallel_embedding`` against NVIDIA ModelOpt 0.47 exports.

The references under ``tests/fixtures/modelopt/`` were written by ModelOpt's own
``export_tensorrt_llm_checkpoint`` from the HF directories committed beside them (see that folder's
README.md). Each case converts the same HF directory with our CLI at float16 and the same (tp, pp), then
requires the same rank files, the same tensor names per rank, and per tensor the same dtype, shape and
bytes. Configs are compared on the fields ModelOpt's fallback config path (no tensorrt_llm installed) gets
right; the fields it gets wrong are checked against the model itself instead (README: "Differences").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ckptfmt import RankFileReader, load_config, model_spec, validate_checkpoint
from tests.tiny_models import convert_tiny

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "modelopt"
MODELS = ("llama_gqa", "qwen2", "gpt2")
LAYOUTS = ((1, 1), (2, 1), (1, 2))
CASES = [(model, tp, pp) for model in MODELS for tp, pp in LAYOUTS]
CASE_IDS = [f"{model}-tp{tp}-pp{pp}" for model, tp, pp in CASES]

# Config facts compared between both checkpoints, as ckptfmt resolves them (defaults applied).
COMPARED_FIELDS = (
    "family",
    "dtype",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_size",
    "intermediate_size",
    "norm_epsilon",
    "max_position_embeddings",
    "use_parallel_embedding",
    "embedding_sharding_dim",
    "share_embedding_table",
    "mapping",
    "quantized",
    "norm",
    "gated_mlp",
    "bias",
    "qkv_bias",
    "lm_head_bias",
    "hidden_act",
    "position_embedding_type",
    "rotary_dim",
)
# Fields ModelOpt's fallback config writes wrongly for a model; tested against the HF model instead.
MODELOPT_WRONG_FIELDS = {
    # It writes rope_gpt_neox (its default when the layer reports no type) for learned positions, and
    # "gelu" where HF GPT-2 uses activation_function "gelu_new" (both are the tanh approximation).
    "gpt2": {"position_embedding_type", "rotary_dim", "hidden_act"},
}


def _case_dir(model: str, tp: int, pp: int) -> Path:
    return FIXTURES / model / f"tp{tp}_pp{pp}"


def _fixtures_present() -> bool:
    return all((FIXTURES / m / "hf" / "config.json").is_file() for m in MODELS) and all(
        (_case_dir(*case) / "config.json").is_file() for case in CASES
    )


pytestmark = pytest.mark.skipif(not _fixtures_present(), reason=f"ModelOpt fixtures absent under {FIXTURES}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(model, tp, pp)`` -> our checkpoint of the fixture's HF dir (each case converted once)."""
    root = tmp_path_factory.mktemp("modelopt-compat")
    done: dict[tuple[str, int, int], Path] = {}

    def get(model: str, tp: int, pp: int) -> Path:
        if (model, tp, pp) not in done:
            out = root / f"{model}-tp{tp}-pp{pp}"
            done[model, tp, pp] = convert_tiny(
                model, out, tp=tp, pp=pp, dtype="float16", hf_dir=FIXTURES / model / "hf", use_parallel_embedding=True
            )
        return done[model, tp, pp]

    return get


def _rank_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("rank*.safetensors"))


def _first_difference(ours: np.ndarray, ref: np.ndarray) -> str:
    """Where two same-shaped arrays first differ, and by how much (for the failure message)."""
    a, b = ours.reshape(-1).view(np.uint8), ref.reshape(-1).view(np.uint8)
    diff = np.flatnonzero(a != b)
    item = int(diff[0]) // ours.dtype.itemsize
    index = np.unravel_index(item, ours.shape)
    spread = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    return (
        f"{int(np.count_nonzero(ours != ref))} of {ours.size} elements differ, first at {tuple(map(int, index))}: "
        f"ours {ours[index]!r} vs modelopt {ref[index]!r}; max |diff| {spread.max():.3g}"
    )


def _effective_config(d: Path) -> dict:
    """The config facts both writers must agree on, resolved through ckptfmt (so omitted defaults count)."""
    cfg = load_config(d)
    spec = model_spec(cfg)
    return {
        "family": spec.family,
        "dtype": cfg.dtype,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_size": cfg.head_size,
        "intermediate_size": cfg.ffn_size,
        "norm_epsilon": cfg.norm_epsilon,
        "max_position_embeddings": cfg.max_position_embeddings,
        "use_parallel_embedding": cfg.use_parallel_embedding,
        "embedding_sharding_dim": cfg.embedding_sharding_dim,
        "share_embedding_table": cfg.share_embedding_table,
        "mapping": (cfg.mapping.world_size, cfg.mapping.tp_size, cfg.mapping.pp_size),
        "quantized": cfg.quantization.is_quantized,
        "norm": spec.norm,
        "gated_mlp": spec.gated_mlp,
        "bias": spec.bias,
        "qkv_bias": spec.qkv_bias,
        "lm_head_bias": spec.lm_head_bias,
        "hidden_act": cfg.hidden_act,
        "position_embedding_type": cfg.position_embedding_type,
        "rotary_dim": spec.rotary_dim,
    }


@pytest.mark.parametrize(("model", "tp", "pp"), CASES, ids=CASE_IDS)
def test_same_rank_files_and_tensor_names(converted, model, tp, pp):
    ours, ref = converted(model, tp, pp), _case_dir(model, tp, pp)
    assert _rank_files(ours) == _rank_files(ref)
    problems = []
    for name in _rank_files(ref):
        ours_names, ref_names = set(RankFileReader(ours / name).keys()), set(RankFileReader(ref / name).keys())
        problems += [f"{name}: {t} only in ours" for t in sorted(ours_names - ref_names)]
        problems += [f"{name}: {t} only in modelopt" for t in sorted(ref_names - ours_names)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("model", "tp", "pp"), CASES, ids=CASE_IDS)
def test_same_dtypes_shapes_and_bytes(converted, model, tp, pp):
    ours, ref = converted(model, tp, pp), _case_dir(model, tp, pp)
    problems, compared = [], 0
    for name in _rank_files(ref):
        with RankFileReader(ours / name) as mine, RankFileReader(ref / name) as theirs:
            for tensor in sorted(set(mine.keys()) & set(theirs.keys())):
                (dt_a, sh_a), (dt_b, sh_b) = mine.spec(tensor), theirs.spec(tensor)
                if (dt_a, sh_a) != (dt_b, sh_b):
                    problems.append(f"{name}: {tensor}: ours {dt_a}{list(sh_a)}, modelopt {dt_b}{list(sh_b)}")
                    continue
                a, b = mine[tensor], theirs[tensor]
                if a.tobytes() != b.tobytes():
                    problems.append(f"{name}: {tensor}: {_first_difference(a, b)}")
                compared += 1
    assert not problems, "\n".join(problems)
    assert compared > 0


@pytest.mark.parametrize(("model", "tp", "pp"), CASES, ids=CASE_IDS)
def test_config_agrees_on_fields_modelopt_gets_right(converted, model, tp, pp):
    ours, ref = _effective_config(converted(model, tp, pp)), _effective_config(_case_dir(model, tp, pp))
    skipped = MODELOPT_WRONG_FIELDS.get(model, set())
    diffs = [
        f"{f}: ours {ours[f]!r}, modelopt {ref[f]!r}" for f in COMPARED_FIELDS if f not in skipped and ours[f] != ref[f]
    ]
    assert not diffs, "\n".join(diffs)


@pytest.mark.parametrize(("model", "tp", "pp"), CASES, ids=CASE_IDS)
def test_config_fields_modelopt_misses_follow_the_model(converted, model, tp, pp):
    """Where ModelOpt's fallback config is wrong or silent, ours must describe the HF model itself."""
    cfg = load_config(converted(model, tp, pp))
    hf = json.loads((FIXTURES / model / "hf" / "config.json").read_text())
    if model == "gpt2":
        assert cfg.position_embedding_type == "learned_absolute"
        assert cfg.hidden_act in ("gelu_new", "gelu")  # HF gelu_new; TensorRT-LLM treats both as tanh GELU
    else:
        assert cfg.position_embedding_type == "rope_gpt_neox"
        assert model_spec(cfg).rotary_base == hf["rope_parameters"]["rope_theta"]
        assert "rotary_base" not in json.loads((_case_dir(model, tp, pp) / "config.json").read_text())


@pytest.mark.parametrize(("model", "tp", "pp"), CASES, ids=CASE_IDS)
def test_modelopt_export_loads_in_ckptfmt(model, tp, pp):
    """The other direction: ckptfmt validates ModelOpt's export (GPT-2: its wrong rope type is corrected from
    the position table the rank file holds, with a note; no manifest: valid but unverified, with a note)."""
    problems, warnings = validate_checkpoint(_case_dir(model, tp, pp))
    assert problems == []
    expected = []
    if model == "gpt2":
        expected = [
            "config.json: position_embedding_type 'rope_gpt_neox' contradicts rank0.safetensors, which holds "
            "transformer.position_embedding.weight: using learned_absolute"
        ]
    unverified = [w for w in warnings if "manifest.json: missing" in w]  # ModelOpt writes no manifest
    assert len(unverified) == 1 and [w for w in warnings if w not in unverified] == expected
