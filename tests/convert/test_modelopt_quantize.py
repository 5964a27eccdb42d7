"""``ckpt-convert hf --qformat``: quantized here with NVIDIA ModelOpt (the ``quant`` extra) on the converter's own
calibration text, compared with ModelOpt's exports of the same model and calibration (tests/fixtures/modelopt_quantized,
made by ModelOpt 0.47 in its pinned environment); the pre-flight refusals come before anything heavy runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ckptfmt import RankFileReader, check_checkpoint
from tests.convert.conftest import run_cli
from tests.convert.test_modelopt_quant_import import dequantized, fails, layout_flags, same_files, unpack_int4

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "modelopt_quantized"
# fixture folder -> flags
MODES = {
    "fp8": ["--qformat", "fp8"],
    "fp8_kv_fp8": ["--qformat", "fp8", "--kv_cache_dtype", "fp8"],
    "int8_sq": ["--qformat", "int8_sq"],
    "int8_sq_kv_int8": ["--qformat", "int8_sq", "--kv_cache_dtype", "int8"],
    "int4_awq": ["--qformat", "int4_awq", "--awq_block_size", "32"],
    "int4_awq_kv_fp8": ["--qformat", "int4_awq", "--awq_block_size", "32", "--kv_cache_dtype", "fp8"],
}


def quantize(capsys, model: str, mode: str, out: Path, *flags: str) -> Path:
    pytest.importorskip("modelopt.torch.quantization", reason="needs the quant extra (nvidia-modelopt)")
    argv = ["hf", "--model_dir", ROOT / model / "hf", "--output_dir", out, "--dtype", "float16", *MODES[mode], *flags]
    rc, stdout, err = run_cli(*argv, capsys=capsys)
    assert rc == 0, err
    assert stdout.strip().splitlines()[-1].startswith(f"{out}: ") and "peak RSS" in stdout
    return out


def test_qformat_cli_layouts(tmp_path, capsys):
    """The command line end to end at tp 2 and pp 2: byte for byte ModelOpt's own exports at those layouts."""
    for tp, pp in ((2, 1), (1, 2)):
        out = quantize(capsys, "llama_gqa", "fp8_kv_fp8", tmp_path / f"tp{tp}pp{pp}", *layout_flags(tp, pp))
        same_files(out, ROOT / "llama_gqa" / "fp8_kv_fp8" / f"tp{tp}_pp{pp}")


def parsed(model: Path, out: Path, mode: str, *flags: str):
    from ckpt_convert.cli import build_parser

    argv = ["hf", "--model_dir", str(model), "--output_dir", str(out), "--dtype", "float16", *MODES[mode], *flags]
    return build_parser().parse_args([str(a) for a in argv])


# the AWQ modes are the slow ones (their search: about 7 s a run on 2 cores, up to 60 s when other jobs load them)
@pytest.mark.parametrize("mode", list(MODES))
def test_quantize_is_modelopts_export(mode, tmp_path):
    """One calibration per mode (as --qformat runs it): the result byte for byte ModelOpt's own
    export_tensorrt_llm_checkpoint of the same model and calibration text at tp 1, and, resharded, at tp 2 and pp 2;
    each non-fused linear dequantizes to ModelOpt's fake-quant weight (quantizer applied to the weight): the same
    integer codes for INT8/INT4 (values equal to float32 rounding), equal to 1e-6 for FP8."""
    pytest.importorskip("modelopt.torch.quantization", reason="needs the quant extra (nvidia-modelopt)")
    import copy

    import torch

    from ckpt_convert import quantize as q
    from ckptfmt.reshard import reshard

    args = parsed(ROOT / "llama_gqa" / "hf", tmp_path / "o", mode, "--use_parallel_embedding")
    config, decoder, samples = q.preflight(ROOT / "llama_gqa" / "hf", args)
    model = q.quantized_model(ROOT / "llama_gqa" / "hf", args, samples)
    q.export_and_import(copy.deepcopy(model), ROOT / "llama_gqa" / "hf", config, decoder, args)
    same_files(tmp_path / "o", ROOT / "llama_gqa" / mode / "tp1_pp1")
    check_checkpoint(tmp_path / "o")
    for tp, pp in ((2, 1), (1, 2)) if (ROOT / "llama_gqa" / mode / "tp2_pp1").is_dir() else ():
        reshard(tmp_path / "o", tmp_path / f"tp{tp}pp{pp}", tp, pp, use_parallel_embedding=True)
        same_files(tmp_path / f"tp{tp}pp{pp}", ROOT / "llama_gqa" / mode / f"tp{tp}_pp{pp}")
    scheme = mode.split("_kv")[0]
    ours = RankFileReader(tmp_path / "o" / "rank0.safetensors")
    for layer in range(2):
        for module, linear in (("attention.dense", "self_attn.o_proj"), ("mlp.proj", "mlp.down_proj")):
            lin = model.get_submodule(f"model.layers.{layer}.{linear}")
            with torch.no_grad():
                fake = lin.weight_quantizer(lin.weight).double().numpy()
            base = f"transformer.layers.{layer}.{module}"
            weight, scale = ours[f"{base}.weight"], ours[f"{base}.weights_scaling_factor"]
            assert np.allclose(dequantized(weight, scale, scheme), fake, rtol=1e-6, atol=0), base
            if scheme == "fp8":
                continue
            codes = unpack_int4(weight) if scheme == "int4_awq" else weight.astype(np.int32)
            group = weight.shape[1] // scale.shape[1] if scheme == "int4_awq" else 1
            per = np.repeat(scale, group, axis=1) if scheme == "int4_awq" else scale[:, None]
            assert np.array_equal(np.rint(fake / per).astype(np.int32), codes), base


def test_qformat_opt_is_the_import_of_modelopts_hf_export(tmp_path, capsys):
    """OPT (no TensorRT-LLM decoder in ModelOpt): quantized, exported in the HF form and imported; the same bytes as
    importing ModelOpt's HF export fixture."""
    mode = "fp8_kv_fp8"
    ours = quantize(capsys, "opt", mode, tmp_path / "o", "--tp_size", "2")
    rc, _, err = run_cli(
        "hf", "--model_dir", ROOT / "opt" / mode / "hf", "--output_dir", tmp_path / "ref", "--dtype", "float16",
        "--tp_size", "2", "--quiet", capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    same_files(ours, tmp_path / "ref")


# ---- pre-flight: refused before ModelOpt or the model is loaded ----


def refused_fast(capsys, model: Path, tmp_path: Path, *flags: str) -> str:
    start = time.monotonic()
    err = fails(capsys, model, tmp_path, *flags)
    assert time.monotonic() - start < 5, "pre-flight must not calibrate"
    return err


def test_architecture_not_quantizable(tiny_hf, tmp_path, capsys):
    err = refused_fast(capsys, tiny_hf("gptneox"), tmp_path, "--qformat", "fp8")
    assert "model_type 'gpt_neox' cannot be quantized here (--qformat supports gpt2, llama, mistral, opt, qwen2)" in err


def test_awq_block_not_dividing(tmp_path, capsys):
    err = refused_fast(capsys, ROOT / "llama_gqa" / "hf", tmp_path, *MODES["int4_awq"], "--tp_size", "4")
    assert "--qformat int4_awq: quantization.group_size: 32 does not divide the per-rank input size 16" in err
    err = refused_fast(capsys, ROOT / "llama_gqa" / "hf", tmp_path, "--qformat", "int4_awq")  # 128 > 64
    assert "group_size: 128 does not divide the per-rank input size 64" in err


def test_tp_not_dividing_heads(tmp_path, capsys):
    err = refused_fast(capsys, ROOT / "llama_gqa" / "hf", tmp_path, "--qformat", "fp8", "--tp_size", "3")
    assert "--qformat fp8: mapping.tp_size: must divide num_attention_heads (4)" in err


def test_output_dir_not_free(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    rc, _, err = run_cli(
        "hf", "--model_dir", ROOT / "llama_gqa" / "hf", "--output_dir", tmp_path / "out", "--qformat", "fp8",
        capsys=capsys,
    )  # fmt: skip
    assert rc == 1 and err.count("\n") == 1 and "out" in err and (tmp_path / "out" / "mine.txt").exists()


def test_int8_kv_cache_without_trtllm_decoder(tmp_path, capsys):
    err = refused_fast(capsys, ROOT / "opt" / "hf", tmp_path, *MODES["int8_sq_kv_int8"])
    assert "--kv_cache_dtype int8: ModelOpt writes an INT8 KV cache only in its TensorRT-LLM export" in err


def test_flag_dependencies(tmp_path, capsys):
    model = ROOT / "llama_gqa" / "hf"
    assert "--kv_cache_dtype fp8: applies only with --qformat" in refused_fast(
        capsys, model, tmp_path, "--kv_cache_dtype", "fp8"
    )
    assert "--awq_block_size 32: applies only with --qformat int4_awq" in refused_fast(
        capsys, model, tmp_path, "--qformat", "fp8", "--awq_block_size", "32"
    )
    assert "--calib_size: must be >= 1 (got 0)" in refused_fast(
        capsys, model, tmp_path, "--qformat", "fp8", "--calib_size", "0"
    )
    assert "--smoothquant: is INT8 SmoothQuant, not --qformat fp8" in refused_fast(
        capsys, model, tmp_path, "--qformat", "fp8", "--smoothquant", "0.5"
    )
    assert "--smoothquant: ALPHA must be within [0, 1] (got 1.5)" in refused_fast(
        capsys, model, tmp_path, "--smoothquant", "1.5"
    )
    for flag in ("--per_token", "--per_channel"):
        assert f"{flag}: applies only with --qformat int8_sq (or --smoothquant)" in refused_fast(
            capsys, model, tmp_path, flag
        )
    assert "--per_token: with --smoothquant needs --per_channel" in refused_fast(
        capsys, model, tmp_path, "--smoothquant", "0.5", "--per_token"
    )
    assert "--smoothquant without --per_channel: opt is exported in ModelOpt's HF form" in refused_fast(
        capsys, ROOT / "opt" / "hf", tmp_path, "--smoothquant", "0.5"
    )


def test_quantized_source_refused(tmp_path, capsys):
    err = refused_fast(capsys, ROOT / "llama_gqa" / "fp8" / "hf", tmp_path, "--qformat", "fp8")
    assert "a quantized export" in err


def test_float32_refused(tmp_path, capsys):
    err = refused_fast(capsys, ROOT / "llama_gqa" / "hf", tmp_path, "--qformat", "fp8", "--dtype", "float32")
    assert "--dtype float32: a quantized checkpoint is written in float16 or bfloat16" in err


def test_calibration_text_missing(tmp_path, capsys):
    err = refused_fast(
        capsys, ROOT / "llama_gqa" / "hf", tmp_path, "--qformat", "fp8", "--calib_dataset", tmp_path / "none.txt"
    )
    assert "none.txt: cannot read the calibration text" in err


def test_help_states_peak_memory(capsys):
    rc, out, _ = run_cli("hf", "--help", capsys=capsys)
    assert rc == 0 and "peak RSS" in out and "--qformat" in out and "--calib_dataset" in out


def test_default_calibration_text_ships():
    from ckpt_convert.quant_options import DEFAULT_CALIB_TEXT

    paragraphs = [p for p in DEFAULT_CALIB_TEXT.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    assert len(paragraphs) >= 16


def test_qformat_gpt2(tiny_hf, tmp_path, capsys):
    """GPT-2 (tied head, learned positions, vocab 250: the text's bytes fit) through ModelOpt's gpt decoder; a float32
    source is written in float16."""
    pytest.importorskip("modelopt.torch.quantization", reason="needs the quant extra (nvidia-modelopt)")
    out = tmp_path / "o"
    rc, _, err = run_cli(
        "hf", "--model_dir", tiny_hf("gpt2"), "--output_dir", out, "--qformat", "int8_sq", "--tp_size", "2", "--quiet",
        capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    config = check_checkpoint(out)
    assert config.quantization.quant_algo == "W8A8_SQ_PER_CHANNEL" and config.dtype == "float16"
    assert config.position_embedding_type == "learned_absolute"


def test_smoothquant_alpha_and_per_token(tmp_path, capsys):
    """convert_checkpoint.py's ``--smoothquant ALPHA --per_channel [--per_token]``: ALPHA 1.0 is ModelOpt's own
    preset (the int8_sq export byte for byte); 0.5 migrates less to the weights (other smoothing factors, the same
    layout); --per_token declares run-time per-token input scales over the same tensors."""
    import json

    fixture = ROOT / "llama_gqa" / "int8_sq" / "tp1_pp1"
    one = quantize(capsys, "llama_gqa", "int8_sq", tmp_path / "a1", "--smoothquant", "1.0", "--per_channel")
    same_files(one, fixture)
    half = quantize(
        capsys, "llama_gqa", "int8_sq", tmp_path / "a05", "--smoothquant", "0.5", "--per_channel", "--per_token"
    )
    check_checkpoint(half)
    assert json.loads((half / "config.json").read_text())["quantization"]["quant_algo"] == (
        "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
    )
    ours, theirs = RankFileReader(half / "rank0.safetensors"), RankFileReader(fixture / "rank0.safetensors")
    assert {n: ours.spec(n) for n in ours.entries} == {n: theirs.spec(n) for n in theirs.entries}
    name = "transformer.layers.0.attention.dense.prequant_scaling_factor"
    assert not np.allclose(ours[name].astype(np.float32), theirs[name].astype(np.float32), rtol=1e-2)


def test_smoothquant_without_per_channel_has_a_weight_scale_per_tensor(tmp_path, capsys):
    """convert_checkpoint.py's ``--smoothquant ALPHA`` alone: one weight scale a tensor (W8A8_SQ_PER_TENSOR_PLUGIN),
    calibrated by ModelOpt; each weight's codes are its fake-quant weight over that scale."""
    import json

    out = quantize(capsys, "llama_gqa", "int8_sq", tmp_path / "o", "--smoothquant", "0.5")
    check_checkpoint(out)
    assert json.loads((out / "config.json").read_text())["quantization"]["quant_algo"] == "W8A8_SQ_PER_TENSOR_PLUGIN"
    ours = RankFileReader(out / "rank0.safetensors")
    for layer in range(2):
        for module in ("attention.qkv", "attention.dense", "mlp.proj"):
            base = f"transformer.layers.{layer}.{module}"
            scale, codes = ours[f"{base}.weights_scaling_factor"], ours[f"{base}.weight"].astype(np.int32)
            assert scale.shape == (1,) and np.abs(codes).max() == 127, base  # the tensor's largest weight is 127
