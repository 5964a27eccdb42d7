"""Shared conversion flags: the usual dtype spellings, and flags that only apply together with another one."""

from __future__ import annotations

import json

import pytest

from tests.convert.conftest import run_cli


@pytest.mark.parametrize(
    ("spelling", "written"),
    [("fp16", "float16"), ("half", "float16"), ("bf16", "bfloat16"), ("fp32", "float32"), ("float", "float32")],
)
def test_dtype_spellings_write_the_canonical_name(spelling, written, tiny_hf, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli("hf", "--model_dir", tiny_hf("gpt2"), "--output_dir", out, "--dtype", spelling, capsys=capsys)
    assert rc == 0, err
    assert json.loads((out / "config.json").read_text())["dtype"] == written


def test_unknown_dtype_is_a_usage_error_listing_the_spellings(tiny_hf, tmp_path, capsys):
    rc, _, err = run_cli(
        "hf", "--model_dir", tiny_hf("gpt2"), "--output_dir", tmp_path / "out", "--dtype", "int8", capsys=capsys
    )
    assert rc == 2 and "dtype 'int8': not one of" in err and "fp16" in err and "bf16" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--weight_only_precision", "int4"], "--weight_only_precision int4: applies only with --use_weight_only"),
        (["--weight_only_precision", "int8"], "--weight_only_precision int8: applies only with --use_weight_only"),
        (["--per_group"], "--per_group: applies only with --use_weight_only"),
        (["--use_weight_only", "--group_size", "32"], "--group_size 32: applies only with --per_group"),
    ],
)
def test_flag_without_the_flag_it_applies_with_is_refused(flags, message, tiny_hf, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli("hf", "--model_dir", tiny_hf("gpt2"), "--output_dir", out, *flags, capsys=capsys)
    assert rc == 1 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_weight_only_defaults_apply_with_use_weight_only(tiny_hf, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli("hf", "--model_dir", tiny_hf("gpt2"), "--output_dir", out, "--use_weight_only", capsys=capsys)
    assert rc == 0, err
    quant = json.loads((out / "config.json").read_text())["quantization"]
    assert quant["use_weight_only"] and quant["weight_only_precision"] == "int8" and not quant["per_group"]
    argv = ["hf", "--model_dir", tiny_hf("gpt2"), "--output_dir", tmp_path / "g", "--use_weight_only", "--per_group"]
    rc, _, err = run_cli(*argv, capsys=capsys)
    assert rc == 1 and "group_size: 128 does not divide the per-rank input size 64" in err  # the default group size
