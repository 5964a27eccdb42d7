"""cluster/slurm/ on a real one-node Slurm: convert -> array build (tp 2 x pp 2, one task per rank) ->
finalize -> eval (one task per rank), and a failing rank that stops finalize and is named by the chain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.build.conftest import run_cli

from .slurm_cluster import SlurmCluster

pytest.importorskip("transformers")
pytestmark = [pytest.mark.slow, pytest.mark.trt]

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "cluster/slurm/submit.sh"
LIMITS = "--max_batch_size 2 --max_input_len 96 --max_output_len 16 --target sm86"
EVAL = "--batch_size 3 --max_ite 1 --max_input_length 80 --output_len 8 --data_type fp32"
CHAIN_TIMEOUT_S = 240


def submit(slurm: SlurmCluster, root: Path, **env: str) -> dict[str, str]:
    """Run submit.sh for tp 2 x pp 2 on ``root``/ckpt -> ``root``/engine with ``env``; its ``step=JOBID``s."""
    venv = Path(sys.executable).parent
    full = {
        **slurm.env,
        "PATH": f"{venv}:{os.environ['PATH']}",
        "CKPT_CHECKPOINT": str(root / "ckpt"),
        "CKPT_ENGINE": str(root / "engine"),
        "CKPT_TP": "2",
        "CKPT_PP": "2",
        "CKPT_LOGS": str(root / "logs"),
        "CKPT_BUILD_ARGS": LIMITS,
        **env,
    }
    done = subprocess.run(["bash", str(SUBMIT)], env=full, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(item.split("=") for item in done.stdout.split())


def states(slurm: SlurmCluster, ids: dict[str, str]) -> dict[str, str]:
    """step (build: build_RANK) -> final state; a job slurmctld no longer lists was cancelled before it ran."""
    out = {}
    for step, job in ids.items():
        for key, state in slurm.job_states(job).items():
            out[f"build_{key.split('_')[1]}" if step == "build" else step] = state
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from tests.eval.summarize_helpers import save_tiny_tokenizer
    from tests.tiny_models import make_tiny_hf

    root = tmp_path_factory.mktemp("chain")
    return {
        "root": root,
        "hf": make_tiny_hf("llama-gqa", root / "hf"),
        "tok": save_tiny_tokenizer(root / "tok"),
    }


@pytest.fixture(scope="module")
def chain(slurm: SlurmCluster, inputs) -> dict:
    root = inputs["root"]
    ids = submit(
        slurm,
        root,
        CKPT_HF_DIR=str(inputs["hf"]),
        CKPT_EVAL_BACKEND="torch",  # engines cannot run here: eval runs the checkpoint, one task per rank
        CKPT_EVAL_ARGS=f"--tokenizer_dir {inputs['tok']} --hf_model_dir {inputs['hf']} --test_trt_llm --test_hf "
        f"--check_accuracy --tensorrt_llm_rouge1_threshold 0 {EVAL} --report {root / 'report'}",
        CKPT_EVAL_SBATCH_ARGS="--overcommit",  # 4 tasks on this 2-core node
    )
    slurm.wait_idle(CHAIN_TIMEOUT_S)
    return {"ids": ids, "states": states(slurm, ids), **inputs}


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((root / "logs").glob("*.out")))


def test_chain_builds_the_engine_of_one_ckpt_build(chain, tmp_path):
    root = chain["root"]
    done = {step: s for step, s in chain["states"].items() if step != "report"}
    assert done == dict.fromkeys(["convert", *(f"build_{r}" for r in range(4)), "finalize", "eval"], "COMPLETED"), logs(
        root
    )
    assert chain["states"].get("report", "CANCELLED") == "CANCELLED"  # only after a failed rank
    engine, plain = root / "engine", tmp_path / "plain"
    assert not (root / ".engine.ranks").exists()
    rc, _, err = run_cli("--checkpoint_dir", root / "ckpt", "--output_dir", plain, *LIMITS.split())
    assert rc == 0, err
    config, single = (json.loads((d / "config.json").read_text()) for d in (engine, plain))
    assert config == single  # settings, bound_to and every stage's I/O
    ours, theirs = (json.loads((d / "manifest.json").read_text())["files"] for d in (engine, plain))
    assert {k: v["size"] for k, v in ours.items()} == {k: v["size"] for k, v in theirs.items()}
    assert sorted(ours) == ["config.json", *(f"rank{r}.engine" for r in range(4))]


def test_eval_one_task_per_rank_matches_transformers(chain):
    root = chain["root"]
    assert chain["states"].get("eval") == "COMPLETED", logs(root)
    eval_log = next((root / "logs").glob("eval-*.out")).read_text()
    assert eval_log.count("accuracy check") == 1, eval_log  # rank 0 reports, the other three tasks compute
    results = json.loads((root / "report" / "results.json").read_text())
    assert results["predictions"]["ours (torch)"] == results["predictions"]["transformers"]


def test_failed_rank_stops_finalize_and_is_named(slurm: SlurmCluster, chain, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(chain["root"] / "ckpt", ckpt)
    data = bytearray((ckpt / "rank2.safetensors").read_bytes())
    data[-1] ^= 0xFF  # only the sha256 of rank 2's file tells
    (ckpt / "rank2.safetensors").write_bytes(bytes(data))
    ids = submit(slurm, tmp_path, CKPT_SKIP_CONVERT="1", CKPT_SKIP_EVAL="1")
    slurm.wait_idle(CHAIN_TIMEOUT_S)
    got = states(slurm, ids)
    assert got["build_2"] == "FAILED" and [got[f"build_{r}"] for r in (0, 1, 3)] == ["COMPLETED"] * 3, got
    assert got.get("finalize", "CANCELLED") == "CANCELLED" and got["report"] == "FAILED", got
    assert not (tmp_path / "engine").exists()
    report = next((tmp_path / "logs").glob("report-*.out")).read_text()
    assert "build of rank 2 failed (FAILED, exit 1:0" in report, report
    assert "rank2.safetensors: sha256 checksum mismatch" in report and "1 rank build(s) failed" in report, report
    staged = sorted(p.name.split(".")[0] for p in (tmp_path / ".engine.ranks").glob("*.json"))
    assert staged == ["rank0", "rank1", "rank3"]  # kept for a rebuild of rank 2 and finalize


def test_eval_of_the_engines_checks_them_and_stops_without_a_gpu(slurm: SlurmCluster, chain):
    """eval.sbatch's default backend on the finalized engines: every task verifies the engine directory (sha256 of
    the plans) and its rank, then stops in one line since engines need a CUDA GPU, which this machine lacks."""
    root = chain["root"]
    env = {
        **slurm.env,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "CKPT_SLURM_DIR": str(SUBMIT.parent),
        "CKPT_ENGINE": str(root / "engine"),
        "CKPT_EVAL_TOOL": "ckpt-run",
        "CKPT_EVAL_ARGS": f"--tokenizer_dir {chain['tok']} --input_text hello",
    }
    out = root / "logs" / "eval-trt.out"
    job = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=4", "--overcommit", "-o", str(out), str(SUBMIT.parent / "eval.sbatch")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    slurm.wait_idle(CHAIN_TIMEOUT_S)
    assert slurm.job_states(job)[job] == "FAILED"
    text = out.read_text()
    assert "engines built by tensorrt_rtx" in text and "cannot run here" in text and "Traceback" not in text, text
