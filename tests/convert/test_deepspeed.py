"""``ckpt-convert deepspeed`` on checkpoints DeepSpeed 0.19 wrote itself (tests/fixtures/deepspeed, see its README).

Each fixture stores DeepSpeed's own ``zero_to_fp32`` reconstruction beside it; the converted tensors must equal it
(exactly for fp32 masters, after the dtype cast for bf16 module weights), mapped to checkpoint names by the
independent ``reference`` code, and the torch backend's logits must match the HF model holding those weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.convert.merge import merged_tensors
from tests.convert.reference import reference_tensors
from tests.convert.test_nemo_convert import FP32_TOL, context_logits, rel_err

from .conftest import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "deepspeed"
IDS = [1, 17, 42, 90, 3, 60, 7, 28, 64, 5, 95]

# fixture -> flags; every one must equal DeepSpeed's zero_to_fp32 output exactly
MASTER_CASES = {
    "zero0_fp32": [],
    "zero1_fp32_dp2": ["--from_fp32_master"],
    "zero2_fp32_dp2": ["--from_fp32_master"],
    "zero2_bf16_dp3": ["--from_fp32_master"],
    "zero3_fp32_dp2": [],
    "zero3_bf16_dp3": [],
    "zero3_fp32_dp2_tied": [],
    "universal": [],
    "pipeline_pp2": [],
}
MODULE_CASES = ["zero0_bf16", "zero1_fp32_dp2", "zero2_fp32_dp2", "zero2_bf16_dp3"]


def convert(capsys, name: str, out: Path, *flags: str) -> Path:
    fixture = FIXTURES / name
    code, _, err = run_cli(
        *[
            "deepspeed",
            "--checkpoint_dir",
            str(fixture / "ckpt"),
            "--model_config",
            str(fixture / "hf" / "config.json"),
            "--output_dir",
            str(out),
            "--quiet",
            *flags,
        ],
        capsys=capsys,
    )
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """``expected(name, file)`` -> canonical tensors of the HF model holding that safetensors state dict."""
    cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def get(name: str, file: str = "expected_fp32.safetensors") -> dict[str, np.ndarray]:
        if (name, file) not in cache:
            hf_dir = hf_model_dir(name, file, tmp_path_factory.mktemp(name))
            cache[(name, file)] = reference_tensors(hf_dir)
        return cache[(name, file)]

    return get


def hf_model_dir(name: str, file: str, out: Path) -> Path:
    """An HF model folder: the fixture's config with the weights of ``file`` (DeepSpeed's own output)."""
    import torch
    import transformers
    from safetensors.torch import load_file

    config = transformers.AutoConfig.from_pretrained(FIXTURES / name / "hf")
    state = load_file(str(FIXTURES / name / file))
    dtype = next(iter(state.values())).dtype
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.config.dtype = str(dtype).removeprefix("torch.")
    model.save_pretrained(out)
    assert torch.equal(model.model.embed_tokens.weight, state["model.embed_tokens.weight"])
    return out


def assert_exact(actual: dict, expected: dict, cast=None) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        want = value if cast is None else value.astype(cast)
        assert actual[name].dtype == want.dtype, name
        assert actual[name].tobytes() == np.ascontiguousarray(want).tobytes(), f"{name}: values differ"


@pytest.mark.parametrize("name", list(MASTER_CASES))
def test_fp32_masters_equal_zero_to_fp32(tmp_path, capsys, expected, name):
    out = convert(capsys, name, tmp_path / "ckpt", *MASTER_CASES[name])
    assert_exact(merged_tensors(out), expected(name))


def test_zero0_bf16_masters_round_to_the_module_weights(tmp_path, capsys, expected):
    """ZeRO 0 has no zero_to_fp32: its fp32 masters (optimizer.fp32_groups) must round to the bf16 module."""
    masters = merged_tensors(convert(capsys, "zero0_bf16", tmp_path / "ckpt", "--from_fp32_master"))
    module = expected("zero0_bf16", "expected_module.safetensors")
    assert_exact({k: v.astype(module[k].dtype) for k, v in masters.items()}, module)
    assert all(v.dtype == np.float32 for v in masters.values())
    assert any(not np.array_equal(v, module[k].astype(np.float32)) for k, v in masters.items())


@pytest.mark.parametrize("name", MODULE_CASES)
def test_module_weights_equal_zero_to_fp32_cast(tmp_path, capsys, expected, name):
    """Without --from_fp32_master the live ``module`` weights: zero_to_fp32's masters cast to the training dtype."""
    out = convert(capsys, name, tmp_path / "ckpt")
    actual = merged_tensors(out)
    module_dtype = next(iter(actual.values())).dtype
    assert_exact(actual, expected(name), cast=module_dtype)
    assert_exact(actual, expected(name, "expected_module.safetensors"))


@pytest.mark.parametrize(
    ("name", "flags"), [("zero3_bf16_dp3", ["--workers", "2"]), ("zero2_fp32_dp2", ["--from_fp32_master"])]
)
def test_tensor_parallel_output_merges_back(tmp_path, capsys, expected, name, flags):
    """tp 2 x pp 2 (in worker processes: the source is reopened there from its picklable description)."""
    out = convert(capsys, name, tmp_path / "ckpt", *flags, "--tp_size", "2", "--pp_size", "2")
    assert_exact(merged_tensors(out), expected(name))


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("zero3_fp32_dp2", []),
        ("zero3_fp32_dp2_tied", []),
        ("zero2_bf16_dp3", ["--from_fp32_master"]),
        ("universal", []),
        ("pipeline_pp2", ["--tp_size", "1", "--pp_size", "1"]),
    ],
)
def test_logits_match_the_hf_model(tmp_path, capsys, name, flags):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_dir = hf_model_dir(name, "expected_fp32.safetensors", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = hf(torch.tensor([IDS])).logits[0].numpy()
    ours = context_logits(convert(capsys, name, tmp_path / "ckpt", *flags), IDS)
    assert rel_err(ours, ref) <= FP32_TOL


def test_tag_and_checkpoint_folder_forms(tmp_path, capsys, expected):
    """--tag picks the folder; the tag folder itself works as --checkpoint_dir; a config folder as --model_config."""
    fixture = FIXTURES / "zero3_fp32_dp2"
    for i, (ckpt, tag) in enumerate([(fixture / "ckpt", "global_step2"), (fixture / "ckpt" / "global_step2", None)]):
        out = tmp_path / f"out{i}"
        argv = ["deepspeed", "--checkpoint_dir", str(ckpt), "--model_config", str(fixture / "hf")]
        argv += ["--output_dir", str(out), "--quiet"] + (["--tag", tag] if tag else [])
        code, _, err = run_cli(*argv, capsys=capsys)
        assert code == 0, err
        assert_exact(merged_tensors(out), expected("zero3_fp32_dp2"))


def test_tokenizer_files_beside_the_config_are_carried(tmp_path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(FIXTURES / "zero0_fp32" / "hf", hf)
    (hf / "tokenizer_config.json").write_text("{}")
    argv = ["deepspeed", "--checkpoint_dir", str(FIXTURES / "zero0_fp32" / "ckpt"), "--model_config", str(hf)]
    code, _, err = run_cli(*argv, "--output_dir", str(tmp_path / "out"), "--quiet", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "tokenizer" / "tokenizer_config.json").read_text() == "{}"


def test_megatron_deepspeed_logits_match_megatron(tmp_path, capsys):
    """Megatron-core under DeepSpeed at tensor parallel 2: logits of megatron's own forward (fixture), and the
    tp 2 output merges back to the tp 1 one."""
    from safetensors.numpy import load_file

    fixture = FIXTURES / "megatron_tp2"
    ref = load_file(str(fixture / "logits.safetensors"))["logits"]
    outs = []
    for tp in ("1", "2"):
        argv = ["deepspeed", "--checkpoint_dir", fixture / "ckpt", "--model_config", fixture / "megatron.yaml"]
        code, _, err = run_cli(*argv, "--output_dir", tmp_path / tp, "--tp_size", tp, "--quiet", capsys=capsys)
        assert code == 0, err
        outs.append(tmp_path / tp)
    assert rel_err(context_logits(outs[0], IDS), ref) <= FP32_TOL
    assert_exact(merged_tensors(outs[1]), merged_tensors(outs[0]))
