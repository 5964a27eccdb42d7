"""``ckpt-summarize`` under ``mpirun -n 2`` on a tp 2 checkpoint (torch backend): the same summaries as one
process, one table printed, one report written."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from tests.eval.summarize_helpers import save_tiny_tokenizer  # noqa: E402
from tests.mpi import MPIRUN  # noqa: E402
from tests.mpi import mpirun as run_mpi  # noqa: E402
from tests.tiny_models import convert_tiny  # noqa: E402

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (openmpi-bin)")]

SMALL = ["--batch_size", "3", "--max_ite", "2", "--max_input_length", "80", "--output_len", "10", "--data_type", "fp32"]


def summarize(*args: str, n: int, extra: tuple[str, ...] = ()):
    return run_mpi(sys.executable, "-m", "ckpt_eval.summarize", *args, *SMALL, *extra, n=n)


def test_tp2_summaries_equal_one_process(tmp_path):
    hf = tmp_path / "hf"
    tp1 = convert_tiny("llama-gqa", tmp_path / "tp1", hf_dir=hf)
    tp2 = convert_tiny("llama-gqa", tmp_path / "tp2", tp=2, hf_dir=hf)
    tok = save_tiny_tokenizer(tmp_path / "tok")
    common = [
        "--tokenizer_dir",
        str(tok),
        "--hf_model_dir",
        str(hf),
        "--test_trt_llm",
        "--test_hf",
        "--check_accuracy",
        "--tensorrt_llm_rouge1_threshold",
        "0",
    ]
    multi = summarize("--checkpoint_dir", str(tp2), *common, "--report", str(tmp_path / "r2"), n=2)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert (
        sum(line.startswith("ROUGE-1 ") for line in multi.stdout.splitlines()) == 1
        and multi.stdout.count("accuracy check") == 1
    )  # rank 0 only
    single = summarize("--checkpoint_dir", str(tp1), *common, "--report", str(tmp_path / "r1"), n=1)
    assert single.returncode == 0, single.stderr[-3000:]
    r1, r2 = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("r1", "r2"))
    assert r2["predictions"]["ours (torch)"] == r1["predictions"]["ours (torch)"] == r1["predictions"]["transformers"]
    assert r2["systems"]["ours (torch)"]["rouge1"] == r1["systems"]["ours (torch)"]["rouge1"]


def test_tp2_error_is_reported_once_and_stops_the_job(tmp_path):
    tp2 = convert_tiny("llama-gqa", tmp_path / "tp2", tp=2)
    tok = save_tiny_tokenizer(tmp_path / "tok")
    done = summarize(
        "--checkpoint_dir",
        str(tp2),
        "--tokenizer_dir",
        str(tok),
        "--test_trt_llm",
        "--dataset",
        str(tmp_path / "missing.jsonl"),
        n=2,
    )
    assert done.returncode != 0 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {tmp_path / 'missing.jsonl'}: no such dataset file or directory"]


def test_tp2_refusal_stops_every_rank(tmp_path):
    """A length the model cannot hold is refused up front (before the ranks run the model), on every rank."""
    tp2 = convert_tiny("llama-gqa", tmp_path / "tp2", tp=2)
    tok = save_tiny_tokenizer(tmp_path / "tok")
    done = summarize(
        "--checkpoint_dir",
        str(tp2),
        "--tokenizer_dir",
        str(tok),
        "--test_trt_llm",
        "--report",
        str(tmp_path / "r"),
        n=2,
        extra=["--output_len", "200"],
    )
    assert done.returncode != 0 and "ROUGE" not in done.stdout and not (tmp_path / "r").exists()
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors[0].startswith("error: --output_len 200: ") and "max_position_embeddings 128" in errors[0]
    assert all(line.startswith("error (rank 1): --output_len 200: ") for line in errors[1:])  # if it spoke first
