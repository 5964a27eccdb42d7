"""Quantized checkpoints in ckptfmt: FP8, INT8 SmoothQuant, INT4 AWQ (ModelOpt's TensorRT-LLM export layout) and
INT8/FP8 KV caches: names, dtypes and shapes of every scale, both config spellings, sharding at any tp/pp,
``reshard`` there and back byte-identical, ``validate``'s checks of the scales, ``inspect``'s listing, and every
executor still refusing the modes in one line.

The layout facts come from ModelOpt 0.47's ``modelopt/torch/export`` (``model_config.py`` field names,
``model_config_utils.pack_linear_weights``, ``quant_utils.to_quantized_weight`` / ``pack_int4_in_uint8``,
``tensor_quantizer.export_amax``, ``postprocess.py``'s split/merge tables); see docs/checkpoint-format.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptfmt import (
    CheckpointConfig,
    CheckpointError,
    RankFileReader,
    expected_tensors,
    load_config,
    model_spec,
    validate_checkpoint,
)
from ckptfmt.cli import inspect_checkpoint, main
from ckptfmt.constants import DTYPES
from ckptfmt.io import save_checkpoint
from ckptfmt.names import KV_CACHE_SCALES, LINEAR_SCALES
from ckptfmt.quant import dequantize_linear
from ckptfmt.reconcile import reconcile
from ckptfmt.reshard import reshard
from ckptfmt.semantics import EXECUTORS, support_rows, unsupported_by
from ckptfmt.sharding import shard, unshard
from tests.build.checkpoints import layout_config

from .conftest import llama_dict

AWQ = {"quant_algo": "W4A16_AWQ", "group_size": 8, "has_zero_point": False, "pre_quant_scale": True}
MODES: dict[str, dict] = {
    "fp8": {"quant_algo": "FP8", "kv_cache_quant_algo": None},
    "fp8-kv-fp8": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},
    "int8_sq": {"quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": None},
    "int8_sq-per-tensor-kv-int8": {"quant_algo": "W8A8_SQ_PER_TENSOR_PLUGIN", "kv_cache_quant_algo": "INT8"},
    "int8_sq-per-token": {"quant_algo": "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "kv_cache_quant_algo": None},
    "int4_awq": {**AWQ, "kv_cache_quant_algo": None},
    "int4_awq-kv-int8": {**AWQ, "kv_cache_quant_algo": "INT8"},
    "kv-fp8-only": {"quant_algo": None, "kv_cache_quant_algo": "FP8"},
    "weight-only-kv-int8": {"quant_algo": "W8A16", "kv_cache_quant_algo": "INT8"},
}
SCALES = (*LINEAR_SCALES, *KV_CACHE_SCALES)


def _config(mode: str, layout: str = "llama-gqa", tp: int = 1, pp: int = 1, **over) -> CheckpointConfig:
    return layout_config(layout, tp=tp, pp=pp, quantization=dict(MODES[mode]), **over)


def _random_tensors(config: CheckpointConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A tp 1 x pp 1 rank file's tensors: random weights, positive scales (int4 nibbles are any int8 bytes)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in expected_tensors(config, 0).items():
        if spec.dtype == "int8":
            out[name] = rng.integers(-128, 128, size=spec.shape, dtype=np.int8)
        elif spec.dtype == "float8_e4m3fn":
            out[name] = (rng.standard_normal(spec.shape) * 100).astype(ml_dtypes.float8_e4m3fn)
        elif name.endswith(SCALES):
            out[name] = rng.uniform(0.01, 2.0, size=spec.shape).astype(DTYPES[spec.dtype])
        else:
            out[name] = (rng.standard_normal(spec.shape) * 0.05).astype(DTYPES[spec.dtype])
    return out


def quantized_checkpoint(path: Path, config: CheckpointConfig, seed: int = 0) -> Path:
    assert config.mapping.world_size == 1
    save_checkpoint(path, config, {0: _random_tensors(config, seed)})
    return path


def _layer0(config: CheckpointConfig, rank: int = 0) -> dict[str, tuple[str, tuple[int, ...]]]:
    prefix = "transformer.layers.0."
    return {
        n.removeprefix(prefix): (s.dtype, s.shape)
        for n, s in expected_tensors(config, rank).items()
        if n.startswith(prefix)
    }


# ---- names, dtypes, shapes (ModelOpt 0.47 facts) ----------------------------------------------------------------
# llama-gqa: hidden 64, 4 heads / 2 kv heads (head 16), ffn 128: qkv out 128, dense in 64, fc/gate out 128, proj in 128
def test_fp8_layout():
    t = _layer0(_config("fp8-kv-fp8"))
    assert t["attention.qkv.weight"] == ("float8_e4m3fn", (128, 64))
    assert t["mlp.proj.weight"] == ("float8_e4m3fn", (64, 128))
    for linear in ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"):
        assert t[f"{linear}.weights_scaling_factor"] == ("float32", (1,))
        assert t[f"{linear}.activation_scaling_factor"] == ("float32", (1,))
        assert f"{linear}.prequant_scaling_factor" not in t
    for kv in KV_CACHE_SCALES:
        assert t[f"attention.{kv}"] == ("float32", (1,))
    specs = expected_tensors(_config("fp8-kv-fp8"), 0)
    assert specs["transformer.layers.0.attention.k_cache_scaling_factor"].optional
    assert not specs["transformer.layers.0.attention.kv_cache_scaling_factor"].optional


def test_int8_smoothquant_layout():
    t = _layer0(_config("int8_sq"))
    assert t["attention.qkv.weight"] == ("int8", (128, 64))
    assert t["attention.qkv.weights_scaling_factor"] == ("float32", (128,))  # per output channel
    assert t["attention.qkv.activation_scaling_factor"] == ("float32", (1,))
    assert t["attention.qkv.prequant_scaling_factor"] == ("float16", (64,))  # per input channel, model dtype
    assert t["mlp.proj.weights_scaling_factor"] == ("float32", (64,))
    assert t["mlp.proj.prequant_scaling_factor"] == ("float16", (128,))
    assert not any("cache_scaling" in n for n in t)
    per_tensor = _layer0(_config("int8_sq-per-tensor-kv-int8"))
    assert per_tensor["attention.qkv.weights_scaling_factor"] == ("float32", (1,))
    assert per_tensor["attention.kv_cache_scaling_factor"] == ("float32", (1,))


def test_int4_awq_layout_and_tp2_shapes():
    t = _layer0(_config("int4_awq"))
    assert t["attention.qkv.weight"] == ("int8", (64, 64))  # [out/2, in]: two nibbles a byte along out
    assert t["attention.qkv.weights_scaling_factor"] == ("float32", (128, 8))  # [out, in/group]
    assert t["attention.qkv.prequant_scaling_factor"] == ("float16", (64,))
    assert "attention.qkv.activation_scaling_factor" not in t
    tp2 = _layer0(_config("int4_awq", tp=2))
    assert tp2["attention.qkv.weight"] == ("int8", (32, 64))
    assert tp2["attention.dense.weight"] == ("int8", (32, 32))
    assert tp2["attention.dense.weights_scaling_factor"] == ("float32", (64, 4))
    assert tp2["attention.dense.prequant_scaling_factor"] == ("float16", (32,))
    assert tp2["attention.qkv.prequant_scaling_factor"] == ("float16", (64,))


def test_scales_follow_the_weights_in_the_file_order():
    names = list(expected_tensors(_config("int8_sq"), 0))
    fc, gate = names.index("transformer.layers.0.mlp.fc.weight"), names.index("transformer.layers.0.mlp.gate.weight")
    assert gate == fc + 1  # the builder hands fc+gate over as one matrix
    assert names.index("transformer.layers.0.mlp.proj.weight") < names.index(
        "transformer.layers.0.attention.qkv.weights_scaling_factor"
    )


@pytest.mark.parametrize(
    ("flags", "algo", "scheme"),
    [
        ({"enable_fp8": True, "fp8_kv_cache": True}, ("FP8", "FP8"), "fp8"),
        (
            {"use_smooth_quant": True, "per_channel": True, "per_token": True},
            ("W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", None),
            "int8_sq",
        ),
        ({"use_smooth_quant": True, "int8_kv_cache": True}, ("W8A8_SQ_PER_TENSOR_PLUGIN", "INT8"), "int8_sq"),
    ],
)
def test_both_spellings_describe_the_same_tensors_and_are_written_back_as_read(flags, algo, scheme):
    by_flags = CheckpointConfig.from_dict(llama_dict(quantization=flags)).check()
    section = {"quant_algo": algo[0], "kv_cache_quant_algo": algo[1]}
    by_algo = CheckpointConfig.from_dict(llama_dict(quantization=section)).check()
    assert by_flags.quantization.scheme == by_algo.quantization.scheme == scheme
    assert (by_flags.quantization.quant_algo, by_flags.quantization.kv_cache_quant_algo) == algo
    assert expected_tensors(by_flags, 0) == expected_tensors(by_algo, 0)
    written = by_flags.to_dict()["quantization"]
    assert {k: written[k] for k in flags} == flags and "quant_algo" not in written
    assert by_algo.to_dict()["quantization"] == section


def test_awq_without_pre_quant_scales_keeps_the_weight_only_layout():
    plain = layout_config("llama-gqa", quantization={"quant_algo": "W4A16_AWQ", "group_size": 8})
    assert plain.quantization.scheme == "weight_only"
    assert "transformer.layers.0.attention.qkv.per_channel_scale" in expected_tensors(plain, 0)


# ---- sharding: every tensor splits and merges exactly ------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(sorted(MODES)),
    tp=st.sampled_from([1, 2, 3, 4]),
    kv=st.sampled_from([1, 2, 6]),
    parallel_embedding=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_shard_unshard_exact_for_every_quantized_tensor(mode, tp, kv, parallel_embedding, seed):
    if kv % tp and tp % kv:
        kv = tp
    over = dict(num_attention_heads=12, num_key_value_heads=kv, hidden_size=96, intermediate_size=48 * tp)
    over.update(vocab_size=37, num_hidden_layers=1, use_parallel_embedding=parallel_embedding)
    cfg = _config(mode, tp=tp, **over)
    assert cfg.problems() == []
    full = _random_tensors(cfg.with_mapping(1, 1), seed)
    for name, tensor in full.items():
        parts = [shard(name, tensor, cfg, r) for r in range(tp)]
        for r, p in enumerate(parts):
            want = expected_tensors(cfg, r)[name]
            assert (p.shape, str(p.dtype)) == (want.shape, want.dtype), name
        assert np.array_equal(unshard(name, parts, cfg).view(np.uint8), tensor.view(np.uint8)), name


def test_awq_nibbles_split_with_their_heads():
    """A packed byte holds output rows 2j and 2j+1 of one rank: splitting bytes at head boundaries is exact."""
    cfg = _config("int4_awq", tp=2)
    spec = model_spec(cfg)
    rows = np.arange(spec.q_size + 2 * spec.kv_size)  # output row ids, packed pairwise as bytes [out/2, in]
    pairs = np.stack([rows[0::2], rows[1::2]], axis=1)[:, :, None].repeat(3, axis=2)  # [out/2, 2, 3]
    rank1 = shard("transformer.layers.0.attention.qkv.weight", pairs, cfg, 1)
    q, kv = spec.q_size // 2, spec.kv_size // 2
    expect = np.concatenate([rows[q : 2 * q], rows[2 * q + kv : 2 * q + 2 * kv], rows[2 * q + 3 * kv :]])
    assert np.array_equal(rank1[:, :, 0].reshape(-1), expect)


# ---- reshard ----------------------------------------------------------------------------------------------------
def rank_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("rank*.safetensors"))}


@pytest.mark.parametrize("mode", ["fp8-kv-fp8", "int8_sq", "int8_sq-per-tensor-kv-int8", "int4_awq-kv-int8"])
def test_reshard_there_and_back_is_byte_identical(tmp_path, mode):
    a = quantized_checkpoint(tmp_path / "a", _config(mode, num_hidden_layers=2, intermediate_size=96))
    assert validate_checkpoint(a) == ([], [])
    for tp, pp in [(2, 1), (1, 2), (4, 1), (2, 2)]:
        b, back = tmp_path / f"b-{tp}x{pp}", tmp_path / f"back-{tp}x{pp}"
        reshard(a, b, tp, pp)
        assert validate_checkpoint(b) == ([], []), (tp, pp)
        reshard(b, back, 1, 1)
        assert rank_bytes(back) == rank_bytes(a), f"{mode} via tp {tp} x pp {pp}"
        assert json.loads((back / "config.json").read_text()) == json.loads((a / "config.json").read_text())


def test_reshard_gpt2_with_biases_and_parallel_embedding(tmp_path):
    cfg = _config("int8_sq", layout="gpt2", use_parallel_embedding=True)
    a = quantized_checkpoint(tmp_path / "a", cfg)
    reshard(a, tmp_path / "b", 2, 1)
    reshard(tmp_path / "b", tmp_path / "back", 1, 1)
    assert rank_bytes(tmp_path / "back") == rank_bytes(a)


def test_optional_kv_scales_may_be_absent(tmp_path):
    cfg = _config("fp8-kv-fp8")
    tensors = {
        n: t
        for n, t in _random_tensors(cfg).items()
        if not n.endswith(("k_cache_scaling_factor", "v_cache_scaling_factor")) or "kv_cache" in n
    }
    save_checkpoint(tmp_path / "a", cfg, {0: tensors})
    assert validate_checkpoint(tmp_path / "a") == ([], [])
    reshard(tmp_path / "a", tmp_path / "b", 2, 1)
    assert "transformer.layers.0.attention.k_cache_scaling_factor" not in RankFileReader(
        tmp_path / "b" / "rank0.safetensors"
    )


def test_replicated_scales_that_differ_between_ranks_are_refused(tmp_path):
    a = quantized_checkpoint(tmp_path / "a", _config("fp8"))
    reshard(a, tmp_path / "b", 2, 1)
    ranks = {}
    for rank in (0, 1):
        reader = RankFileReader(tmp_path / "b" / f"rank{rank}.safetensors")
        ranks[rank] = {n: np.array(reader[n]) for n in reader}
    name = "transformer.layers.1.mlp.proj.weights_scaling_factor"
    ranks[1][name] = ranks[1][name] * 2
    save_checkpoint(tmp_path / "c", _config("fp8", tp=2), ranks)
    with pytest.raises(CheckpointError, match=f"tensor {name}: differs between tensor-parallel ranks") as err:
        reshard(tmp_path / "c", tmp_path / "d", 1, 1)
    assert "\n" not in str(err.value) and not (tmp_path / "d").exists()


# ---- validate ---------------------------------------------------------------------------------------------------
def _broken(tmp_path: Path, mode: str, name: str, value) -> Path:
    cfg = _config(mode)
    tensors = _random_tensors(cfg)
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    save_checkpoint(tmp_path / "x", cfg, {0: tensors})
    return tmp_path / "x"


@pytest.mark.parametrize(
    ("mode", "name", "value", "message"),
    [
        (
            "int8_sq",
            "transformer.layers.0.mlp.fc.weights_scaling_factor",
            None,
            "missing tensor transformer.layers.0.mlp.fc.weights_scaling_factor",
        ),
        (
            "int8_sq",
            "transformer.layers.0.mlp.fc.weights_scaling_factor",
            np.ones(3, np.float32),
            "mlp.fc.weights_scaling_factor: float32[3], expected float32[128]",
        ),
        (
            "fp8",
            "transformer.layers.1.attention.qkv.weights_scaling_factor",
            np.ones(1, np.float16),
            "float16[1], expected float32[1]",
        ),
        (
            "fp8",
            "transformer.layers.0.attention.qkv.activation_scaling_factor",
            np.array([np.nan], np.float32),
            "activation_scaling_factor: 1 non-finite value(s)",
        ),
        (
            "int4_awq",
            "transformer.layers.0.mlp.proj.weights_scaling_factor",
            np.zeros((64, 16), np.float32),
            "1024 zero or negative value(s)",
        ),
        (
            "int4_awq",
            "transformer.layers.0.attention.dense.prequant_scaling_factor",
            -np.ones(64, np.float16),
            "zero or negative",
        ),
        (
            "fp8-kv-fp8",
            "transformer.layers.0.attention.kv_cache_scaling_factor",
            np.array([np.inf], np.float32),
            "kv_cache_scaling_factor: 1 non-finite",
        ),
        (
            "fp8",
            "transformer.layers.0.mlp.gate.weight",
            np.zeros((128, 64), np.float16),
            "mlp.gate.weight: float16[128, 64], expected float8_e4m3fn[128, 64]",
        ),
    ],
)
def test_validate_names_the_bad_scale(tmp_path, mode, name, value, message):
    problems, _ = validate_checkpoint(_broken(tmp_path, mode, name, value))
    assert len(problems) == 1 and "rank0.safetensors" in problems[0] and message in problems[0], problems
    assert "\n" not in problems[0]


def test_config_problems_are_one_line_each(tmp_path):
    with pytest.raises(CheckpointError, match="quantization.quant_algo: unknown value 'W3A5'"):
        layout_config("llama-gqa", quantization={"quant_algo": "W3A5"})
    a = quantized_checkpoint(tmp_path / "a", _config("int4_awq"))
    config = json.loads((a / "config.json").read_text())
    config["quantization"]["group_size"] = 24
    (a / "config.json").write_text(json.dumps(config))
    problems, _ = validate_checkpoint(a, hash_files=False)
    assert any("quantization.group_size: 24 does not divide the per-rank input size 64" in p for p in problems)


# ---- inspect and the executors ----------------------------------------------------------------------------------
def test_inspect_lists_the_scales(tmp_path, capsys):
    a = quantized_checkpoint(tmp_path / "a", _config("int4_awq-kv-int8"))
    info = inspect_checkpoint(str(a))
    q = info["quantization"]
    assert (q["quant_algo"], q["kv_cache_quant_algo"], q["scheme"], q["group_size"]) == (
        "W4A16_AWQ",
        "INT8",
        "int4_awq",
        8,
    )
    assert q["scales"] == {
        "weights_scaling_factor": 10,
        "prequant_scaling_factor": 10,
        "k_cache_scaling_factor": 2,
        "kv_cache_scaling_factor": 2,
        "v_cache_scaling_factor": 2,
    }
    assert main(["inspect", str(a)]) == 0
    out = capsys.readouterr().out
    assert (
        "scales (int4_awq layout): weights_scaling_factor 10, prequant_scaling_factor 10, k_cache_scaling_factor 2"
        in out
    )


@pytest.mark.parametrize("mode", [m for m in MODES if m != "weight-only-kv-int8"] + ["weight-only-kv-int8"])
def test_executors_compute_a_mode_or_refuse_it_in_one_line(mode):
    """The support table decides per executor (tests/test_executor_parity.py runs what it claims); whoever does not
    compute a mode refuses it in one line naming who does."""
    spec = model_spec(_config(mode))
    rows = support_rows(spec)
    for executor in EXECUTORS:
        problems = unsupported_by(spec, executor)
        refused = [name for name, _, who in rows if executor not in who]
        assert len(problems) == len(refused), (mode, executor)
        assert all("\n" not in p and "is not supported by" in p and "supported by:" in p for p in problems)


# ---- real ModelOpt exports (tools/convert's fixtures, when they are there) -----------------------------------------
# CKPTFMT_QUANTIZED_EXPORTS: another folder of exports laid out the same way (<model>/<mode>/tp{tp}_pp{pp}/)
FIXTURES = Path(
    os.environ.get("CKPTFMT_QUANTIZED_EXPORTS") or Path(__file__).parents[1] / "fixtures" / "modelopt_quantized"
)
EXPORTS = sorted(p.parent for p in FIXTURES.glob("**/rank0.safetensors")) if FIXTURES.is_dir() else []
NO_EXPORTS = pytest.mark.skipif(not EXPORTS, reason=f"no ModelOpt quantized exports under {FIXTURES}")


def _ids(paths: list[Path]) -> list[str] | None:
    return [str(p.relative_to(FIXTURES)) for p in paths] or None


@NO_EXPORTS
@pytest.mark.parametrize("export", EXPORTS, ids=_ids(EXPORTS))
def test_expected_tensors_equal_modelopt_exports(export):
    config = reconcile(load_config(export), export)
    for rank in range(config.mapping.world_size):
        reader = RankFileReader(export / f"rank{rank}.safetensors")
        got = {n: (str(reader.spec(n)[0]), tuple(reader.spec(n)[1])) for n in reader}
        want = {n: (s.dtype, s.shape) for n, s in expected_tensors(config, rank).items() if n in got or not s.optional}
        assert got == want, f"{export.relative_to(FIXTURES)} rank {rank}"
    assert validate_checkpoint(export, hash_files=False)[0] == []
    section = json.loads((export / "config.json").read_text())["quantization"]
    assert config.quantization.to_dict() == section  # written back as read


SINGLE = [p for p in EXPORTS if p.name == "tp1_pp1"]


@NO_EXPORTS
@pytest.mark.parametrize("export", SINGLE, ids=_ids(SINGLE))
def test_reshard_of_a_tp1_export_equals_modelopts_own_layouts(tmp_path, export):
    """ModelOpt splits the float weights and quantizes each rank's part; splitting its tp 1 export gives the same
    bytes (per-tensor scales replicated, per-channel / per-group ones split with their weights)."""
    others = [p for p in export.parent.iterdir() if p.name != export.name and (p / "rank0.safetensors").exists()]
    for other in others:
        m = load_config(other).mapping
        out = tmp_path / other.name
        reshard(export, out, m.tp_size, m.pp_size, verify=False)
        for rank in range(m.world_size):
            want, got = (
                RankFileReader(other / f"rank{rank}.safetensors"),
                RankFileReader(out / f"rank{rank}.safetensors"),
            )
            assert sorted(want) == sorted(got), other.name
            for name in want:
                assert np.asarray(got[name]).tobytes() == np.asarray(want[name]).tobytes(), f"{other.name} {name}"
        reshard(other, tmp_path / f"{other.name}-back", 1, 1, verify=False)
        for name in (ref := RankFileReader(export / "rank0.safetensors")):
            back = RankFileReader(tmp_path / f"{other.name}-back" / "rank0.safetensors")
            assert np.asarray(back[name]).tobytes() == np.asarray(ref[name]).tobytes(), f"{other.name} back {name}"


HF_NAMES = {"attention.dense": "self_attn.o_proj", "mlp.proj": "mlp.down_proj"}


@NO_EXPORTS
@pytest.mark.parametrize("export", SINGLE, ids=_ids(SINGLE))
def test_dequantized_weights_match_the_source_model(export):
    """The layout facts (AWQ nibble order along ``out``, scale orientation): dequantized weights equal the source
    model's (divided by the pre-quant scale) within half a quantization step (FP8: e4m3's relative precision)."""
    from safetensors.numpy import load_file

    source = export.parents[1] / "hf" / "model.safetensors"
    if not source.exists():
        pytest.skip(f"no source model {source}")
    hf = load_file(source)
    config = load_config(export)
    quant = config.quantization
    reader = RankFileReader(export / "rank0.safetensors")
    for layer in range(config.num_hidden_layers):
        for ours, theirs in HF_NAMES.items():
            base = f"transformer.layers.{layer}.{ours}"
            scale = np.asarray(reader[f"{base}.weights_scaling_factor"], np.float32)
            deq = dequantize_linear(reader[f"{base}.weight"], scale, quant.scheme, quant.group_size)
            ref = hf[f"model.layers.{layer}.{theirs}.weight"].astype(np.float32)
            if f"{base}.prequant_scaling_factor" in reader:
                ref = ref / np.asarray(reader[f"{base}.prequant_scaling_factor"], np.float32)[None, :]
            if quant.scheme == "fp8":
                bound = np.abs(ref) * 2.0**-4 + scale * 2.0**-9
            else:
                step = np.repeat(scale, ref.shape[1] // scale.shape[1], axis=1) if scale.ndim == 2 else scale[:, None]
                bound = step / 2 + np.abs(ref) * 2.0**-10  # + float16 rounding of the pre-quant scale
            assert (np.abs(deq - ref) <= bound).mean() > 0.999, f"{export.relative_to(FIXTURES)} {base}"
