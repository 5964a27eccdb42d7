"""Bad input gives one clear line and exit 1, never a traceback or a half-written engine directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from checkpoints import layout_config, random_checkpoint
from conftest import run_cli

LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "16"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", layout_config("llama-gqa"))


def assert_one_line_error(tmp_path, rc: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("ckpt-build: error:")]
    assert rc == 1 and len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def edit_config(src, dst, **changes):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "manifest.json").unlink()
    return dst


def test_missing_checkpoint(tmp_path):
    rc, _, err = run_cli("--checkpoint_dir", tmp_path / "nope", "--output_dir", tmp_path / "out")
    assert_one_line_error(tmp_path, rc, err, "nope")


def test_corrupt_rank_file(tmp_path, ckpt):
    import shutil

    bad = shutil.copytree(ckpt, tmp_path / "bad")
    (bad / "rank0.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     ")
    rc, _, err = run_cli("--checkpoint_dir", bad, "--output_dir", tmp_path / "out", *LIMITS)
    assert_one_line_error(tmp_path, rc, err, "rank0.safetensors")


def test_unsupported_architecture(tmp_path, ckpt):
    bad = edit_config(ckpt, tmp_path / "bad", architecture="MambaForCausalLM")
    rc, _, err = run_cli("--checkpoint_dir", bad, "--output_dir", tmp_path / "out", *LIMITS)
    assert_one_line_error(tmp_path, rc, err, "architecture", "MambaForCausalLM")


@pytest.mark.parametrize(
    "quant,word",
    [
        ({"quant_algo": "W4A8_AWQ"}, "INT4 weights with FP8 activations"),  # FP8 / SmoothQuant / KV: built
        ({"quant_algo": "NVFP4"}, "quant_algo NVFP4"),  # unknown to ckptfmt's parser: named all the same
        ({"quant_algo": "W4A16_GPTQ", "has_zero_point": True}, "INT4 GPTQ with zero points"),
    ],
)
def test_unsupported_quantization(tmp_path, ckpt, quant, word):
    bad = edit_config(ckpt, tmp_path / "bad", quantization=quant)
    rc, _, err = run_cli("--checkpoint_dir", bad, "--output_dir", tmp_path / "out", *LIMITS)
    assert_one_line_error(tmp_path, rc, err, "quantization: a quantized checkpoint", word, "weight-only int8/int4")


def test_learned_positions_limit(tmp_path):
    ck = random_checkpoint(tmp_path / "gpt2", layout_config("gpt2"))  # max_position_embeddings 128
    rc, _, err = run_cli(
        "--checkpoint_dir", ck, "--output_dir", tmp_path / "out", "--max_input_len", "100", "--max_output_len", "29"
    )
    assert_one_line_error(tmp_path, rc, err, "100 + 29 = 129", "max_position_embeddings 128")


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--max_beam_width", "4"], "--max_beam_width: only 1"),
        (["--max_batch_size", "0"], "--max_batch_size: must be >= 1"),
        (["--max_seq_len", "40"], "--max_seq_len: 40 != max_input_len 16 + max_output_len 16"),
        (["--target", "sm90"], "--target: sm90 not supported"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_impossible_limits(tmp_path, ckpt, flags, fragment):
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", *LIMITS, *flags)
    assert_one_line_error(tmp_path, rc, err, fragment)


def test_quantization_needs_every_target(tmp_path):
    ck = random_checkpoint(tmp_path / "q", layout_config("llama-gqa", quant="int4"))
    rc, _, err = run_cli("--checkpoint_dir", ck, "--output_dir", tmp_path / "out", *LIMITS, "--target", "sm75,sm89")
    assert_one_line_error(tmp_path, rc, err, "sm75 cannot run int4")


def test_heads_not_divisible_by_tp(tmp_path, ckpt):
    bad = edit_config(ckpt, tmp_path / "bad", mapping={"world_size": 3, "tp_size": 3})
    rc, _, err = run_cli("--checkpoint_dir", bad, "--output_dir", tmp_path / "out", *LIMITS)
    assert_one_line_error(tmp_path, rc, err, "tp_size")


def test_existing_output_needs_overwrite(tmp_path, ckpt):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("not ours")  # an empty directory is simply used
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", *LIMITS)
    assert rc == 1 and "--overwrite" in err


def test_no_tensorrt_module_names_the_packages(tmp_path, ckpt):
    """In a fresh interpreter where neither TensorRT module can be imported."""
    code = (
        "import sys\n"
        "for m in ('tensorrt', 'tensorrt_rtx', 'tensorrt_rtx_bindings'): sys.modules[m] = None\n"
        "from ckpt_build.cli import main\n"
        f"sys.exit(main(['--checkpoint_dir', {str(ckpt)!r}, '--output_dir', {str(tmp_path / 'out')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(
        tmp_path,
        proc.returncode,
        proc.stderr,
        "no TensorRT module installed",
        "tensorrt-rtx-cu13-libs==1.7.1.116",
        "tensorrt-rtx-cu13-bindings==1.7.1.116",
    )


@pytest.mark.trt
def test_plugin_flags_accepted_with_one_notice(tmp_path, ckpt):
    pytest.importorskip("tensorrt_rtx_bindings")
    rc, out, err = run_cli(
        "--checkpoint_dir",
        ckpt,
        "--output_dir",
        tmp_path / "out",
        *LIMITS,
        "--target",
        "sm89",
        "--gemm_plugin",
        "float16",
        "--gpt_attention_plugin",
        "float16",
        "--context_fmha",
        "enable",
        "--paged_kv_cache",
        "enable",
        "--remove_input_padding",
        "enable",
        "--strongly_typed",
        "--max_num_tokens",
        "64",
        "--log_level",
        "warning",
    )
    assert rc == 0, err
    notices = [line for line in err.splitlines() if "native layers" in line]
    assert len(notices) == 1 and "--gemm_plugin" in notices[0] and "--paged_kv_cache" in notices[0]
    assert "built 1 engine(s)" in out


def test_default_targets_follow_the_checkpoint_precision():
    pytest.importorskip("tensorrt_rtx_bindings")
    from ckpt_build.trt_api import load_trt, resolve_targets

    module = load_trt("tensorrt_rtx")
    every = module.supported_targets()
    assert {"sm75", "sm80", "sm86", "sm89", "sm120"} <= set(every)
    assert resolve_targets(module, None, ["float16"]) == every
    assert "sm75" not in resolve_targets(module, None, ["bfloat16"])
    assert "sm75" not in resolve_targets(module, None, ["float16", "int4"])
    assert resolve_targets(module, ["sm80", "sm120"], ["bfloat16", "int4"]) == ["sm80", "sm120"]
    # TensorRT-RTX refuses FP32 GEMMs for Turing: a float32 checkpoint must not target sm75 by default
    assert "sm75" not in resolve_targets(module, None, ["float32"])


@pytest.mark.trt
def test_float32_checkpoint_builds_with_default_targets(tmp_path):
    ck = random_checkpoint(tmp_path / "f32", layout_config("llama-gqa", dtype="float32"))
    rc, _, err = run_cli("--checkpoint_dir", ck, "--output_dir", tmp_path / "out", *LIMITS)
    assert rc == 0, err
    assert (tmp_path / "out" / "rank0.engine").stat().st_size > 0
