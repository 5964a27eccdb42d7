"""ckpt-mmlu and ckpt-perplexity under ``mpirun -n 2`` on a tp 2 checkpoint: the single-process results, one
table, one report; a bad input is one error line and exit 2."""

from __future__ import annotations

import importlib
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


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("tasks_mpi")
    return {
        "base": base,
        "tp1": convert_tiny("llama-gqa", base / "tp1"),
        "tp2": convert_tiny("llama-gqa", base / "tp2", tp=2),
        "tok": save_tiny_tokenizer(base / "tok"),
    }


def task(module: str, ckpt, models, report: str, n: int, *extra: str):
    """Under ``mpirun -n n``, or in this process for n = 1."""
    argv = ["--checkpoint_dir", str(ckpt), "--tokenizer_dir", str(models["tok"]), "--test_trt_llm", *extra]
    argv += ["--report", str(models["base"] / report)]
    if n == 1:
        assert importlib.import_module(f"ckpt_eval.{module}").main(argv) == 0
        stdout = ""
    else:
        done = run_mpi(sys.executable, "-m", f"ckpt_eval.{module}", *argv, n=n)
        assert done.returncode == 0, done.stderr[-3000:]
        stdout = done.stdout
    return stdout, json.loads((models["base"] / report / "results.json").read_text())


def test_mmlu_tp2_equals_one_process(models):
    extra = ("--ntrain", "1", "--batch_size", "8")
    out, multi = task("mmlu", models["tp2"], models, "m2", 2, *extra)
    assert sum(line.startswith("accuracy ") for line in out.splitlines()) == 1  # rank 0 prints
    _, single = task("mmlu", models["tp1"], models, "m1", 1, *extra)
    assert multi["predictions"]["ours (torch)"] == single["predictions"]["ours (torch)"]
    assert multi["systems"]["ours (torch)"]["accuracy"] == single["systems"]["ours (torch)"]["accuracy"]


def test_perplexity_tp2_equals_one_process(models):
    extra = ("--max_length", "40", "--stride", "16", "--batch_size", "3")
    _, multi = task("perplexity", models["tp2"], models, "p2", 2, *extra)
    _, single = task("perplexity", models["tp1"], models, "p1", 1, *extra)
    for a, b in zip(multi["documents"]["ours (torch)"], single["documents"]["ours (torch)"]):
        assert a["tokens"] == b["tokens"] and a["nll"] == pytest.approx(b["nll"], rel=1e-5)


def test_tp2_bad_input_is_one_line(models, tmp_path):
    argv = ["--checkpoint_dir", str(models["tp2"]), "--tokenizer_dir", str(models["tok"]), "--test_trt_llm"]
    done = run_mpi(sys.executable, "-m", "ckpt_eval.mmlu", *argv, "--data_dir", str(tmp_path), n=2)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2 and done.stdout == ""
    assert errors == [
        f"error: {tmp_path / 'test'}: no <subject>_test.csv files (expected MMLU's dev/ and test/ layout)"
    ]
