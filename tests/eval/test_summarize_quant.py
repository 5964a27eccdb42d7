"""The quantization label of each tested system (``quant_label``): from ckptfmt's parse of every mode's config,
in ckpt-summarize's table, results.json and chart legend, for a ModelOpt-quantized checkpoint, an engine
directory's config and transformers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ckpt_eval.quant_label import checkpoint_label, hf_label
from ckpt_eval.report import format_table
from ckptfmt import load_config
from ckptfmt.config import QuantConfig

QUANTIZED = Path(__file__).resolve().parents[1] / "fixtures" / "modelopt_quantized" / "llama_gqa"
FIXTURE_LABELS = {
    "fp8": "fp8",
    "fp8_kv_fp8": "fp8 + kv fp8",
    "int8_sq": "int8_sq per-channel/per-tensor",
    "int8_sq_kv_int8": "int8_sq per-channel/per-tensor + kv int8",
    "int4_awq": "int4_awq g32",
    "int4_awq_kv_fp8": "int4_awq g32 + kv fp8",
}


def quant(section: dict) -> QuantConfig:
    problems: list[str] = []
    parsed = QuantConfig.from_dict(section, problems)
    assert problems == []
    return parsed


@pytest.mark.parametrize("mode", list(FIXTURE_LABELS))
def test_modelopt_exports_are_labelled_from_their_config(mode):
    assert checkpoint_label(load_config(QUANTIZED / mode / "tp1_pp1").quantization) == FIXTURE_LABELS[mode]


@pytest.mark.parametrize(
    ("section", "label"),
    [
        ({}, "none"),
        ({"quant_algo": None, "kv_cache_quant_algo": None}, "none"),
        ({"kv_cache_quant_algo": "INT8"}, "kv int8"),
        ({"use_weight_only": True, "weight_only_precision": "int8"}, "int8 weight-only per-channel"),
        (
            {"use_weight_only": True, "weight_only_precision": "int4", "per_group": True, "group_size": 128},
            "int4 weight-only g128",
        ),
        ({"quant_algo": "W4A16_GPTQ", "group_size": 64, "has_zero_point": True}, "int4_gptq g64 zero-point"),
        ({"quant_algo": "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"}, "int8_sq per-channel/per-token"),
        ({"quant_algo": "W8A8_SQ_PER_TENSOR_PLUGIN"}, "int8_sq per-tensor/per-tensor"),
        (
            {"quant_algo": "W4A16_AWQ", "pre_quant_scale": True, "kv_cache_quant_algo": "INT8"},
            "int4_awq g128 + kv int8",
        ),
    ],
)
def test_every_spelling_of_a_mode_gets_its_label(section, label):
    assert checkpoint_label(quant(section)) == label


def test_transformers_label_names_its_quant_method_and_dtype():
    assert hf_label({"model_type": "llama"}, "float32") == "none (transformers, float32)"
    assert hf_label({"quantization_config": {"quant_method": "awq"}}, "float16") == "awq (transformers, float16)"
    assert hf_label({"quantization_config": "bad"}, "bfloat16") == "none (transformers, bfloat16)"


def test_the_label_row_heads_the_table_without_a_difference():
    systems = {"ours": {"quantization": "fp8", "rouge1": 30.0}, "hf": {"quantization": "none", "rouge1": 31.0}}
    lines = format_table(systems).splitlines()
    assert re.split(r"\s{2,}", lines[1].strip()) == ["quantization", "fp8", "none"]
    assert re.split(r"\s{2,}", lines[2].strip()) == ["ROUGE-1", "30.00", "31.00", "-1.00"]
    assert "quantization" not in format_table({"ours": {"rouge1": 30.0}})  # no label, no row


def test_an_engine_directory_is_labelled_from_its_checkpoint_config(tmp_path):
    from ckpt_eval.summarize import build_parser, quantization_labels
    from tests.eval.engine_network import engine_config

    engine_config(QUANTIZED / "int8_sq_kv_int8" / "tp1_pp1").save(tmp_path)
    args = build_parser().parse_args(["--engine_dir", str(tmp_path), "--test_trt_llm"])
    labels = quantization_labels(args, "trt", str(tmp_path), "ours (trt)")
    assert labels == {"ours (trt)": FIXTURE_LABELS["int8_sq_kv_int8"]}


def test_summarize_reports_the_mode_beside_rouge(tmp_path, capsys):
    """ckpt-summarize on ModelOpt's INT4 AWQ + FP8 KV export (torch backend) against transformers on its source."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ckpt_eval.summarize import main
    from tests.eval.summarize_helpers import save_tiny_tokenizer

    tok = save_tiny_tokenizer(tmp_path / "tok")
    argv = ["--checkpoint_dir", str(QUANTIZED / "int4_awq_kv_fp8" / "tp1_pp1"), "--hf_model_dir"]
    argv += [str(QUANTIZED / "hf"), "--tokenizer_dir", str(tok), "--test_trt_llm", "--test_hf", "--data_type", "fp32"]
    argv += ["--batch_size", "2", "--max_ite", "1", "--max_input_length", "48", "--output_len", "8"]
    assert main([*argv, "--device", "cpu", "--report", str(tmp_path / "report")]) == 0
    out, err = capsys.readouterr()
    row = re.split(r"\s{2,}", out.splitlines()[1].strip())
    assert row == ["quantization", "int4_awq g32 + kv fp8", "none (transformers, float32)"]
    assert "[int4_awq g32 + kv fp8] and transformers [none (transformers, float32)] on 1 batches" in err
    systems = json.loads((tmp_path / "report" / "results.json").read_text())["systems"]
    assert systems["ours (torch)"]["quantization"] == "int4_awq g32 + kv fp8"
    assert systems["transformers"]["quantization"] == "none (transformers, float32)"
    assert isinstance(systems["ours (torch)"]["rouge1"], float)
