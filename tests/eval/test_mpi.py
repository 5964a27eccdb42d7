"""tp x pp checkpoints run as several processes (mpirun, torchrun) compute what one process computes.

One mpirun call runs every case (``python -m tests.eval.test_mpi OUT CKPT...`` is the worker); each rank saves
its result, and the tests compare ranks with each other, with transformers and with the single-rank run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ckpt_convert")

import numpy as np  # noqa: E402

from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckptfmt import RANK_FILE, RankFileReader, load_config, save_checkpoint  # noqa: E402
from ckptfmt.names import LM_HEAD  # noqa: E402
from tests.eval.test_model_parity import (  # noqa: E402
    FP32_TOL,
    VARIANTS,
    Models,
    assert_matches_reference,
    prompts,
    reference,
    rel_err,
    run_ours,
)
from tests.mpi import MPIRUN, mpirun  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (openmpi-bin)")]

# case -> (variant, tp, pp, converter flags)
CASES: dict[str, tuple[str, int, int, dict]] = {
    **{f"{v}-tp2": (v, 2, 1, {}) for v in VARIANTS},
    **{f"{v}-pp2": (v, 1, 2, {}) for v in VARIANTS},
    "llama-tied-tp2-embedding-rows-shared": (
        "llama-tied",
        2,
        1,
        {"use_parallel_embedding": True, "embedding_sharding_dim": 0, "use_embedding_sharing": True},
    ),
    "gpt2-tp2-embedding-cols": ("gpt2", 2, 1, {"use_parallel_embedding": True, "embedding_sharding_dim": 1}),
    "opt-postnorm-proj-tp2-embedding-rows": ("opt-postnorm-proj", 2, 1, {"use_parallel_embedding": True}),
    # shared table without lm_head: checkpoints valid by ckptfmt's rules that our converter does not write
    "llama-tied-tp2-embedding-cols-shared": (
        "llama-tied",
        2,
        1,
        {"use_parallel_embedding": True, "embedding_sharding_dim": 1, "share_table": True},
    ),
    "llama-tied-tp2-replicated-shared": ("llama-tied", 2, 1, {"share_table": True}),
    "llama-gqa-tp2-int4-group": (
        "llama-gqa",
        2,
        1,
        {"use_weight_only": True, "weight_only_precision": "int4", "per_group": True, "group_size": 32},
    ),
}


def case_checkpoint(models: Models, variant: str, tp: int, pp: int, flags: dict) -> Path:
    flags = dict(flags)
    shared = flags.pop("share_table", False)
    ckpt = models.checkpoint(variant, tp, pp, **flags)
    return share_embedding_table(ckpt) if shared else ckpt


def share_embedding_table(src: Path) -> Path:
    """A copy of tied-model checkpoint ``src`` without ``lm_head``, sharing the vocab embedding instead."""
    out = src.with_name(src.name + "-shared")
    if not out.exists():
        config = load_config(src)
        config.share_embedding_table = True
        ranks = {}
        for rank in range(config.mapping.world_size):
            with RankFileReader(src / RANK_FILE.format(rank=rank)) as reader:
                ranks[rank] = {n: np.array(reader[n]) for n in reader.entries if n != LM_HEAD}
        save_checkpoint(out, config, ranks)
    return out


def result_file(out: Path, ckpt: str | Path, rank: int) -> Path:
    return out / f"{Path(ckpt).parent.name}-{Path(ckpt).name}.rank{rank}.pt"


def worker(out: Path, checkpoints: list[str]) -> None:
    """Run every checkpoint on this rank and save what this rank returns."""
    for ckpt in checkpoints:
        runner = ModelRunner.from_dir(ckpt, device="cpu")
        torch.save(run_ours(runner, prompts()), result_file(out, ckpt, runner.rank))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("eval-mpi-models"))


@pytest.fixture(scope="module")
def results(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-mpi-results")
    dirs = [str(case_checkpoint(models, *case)) for case in CASES.values()]
    proc = mpirun(sys.executable, "-m", "tests.eval.test_mpi", str(out), *dirs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def load(results: Path, ckpt: Path, rank: int) -> dict:
    return torch.load(result_file(results, ckpt, rank), weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_multi_rank_equals_single_rank_and_transformers(models, results, case):
    variant, tp, pp, flags = CASES[case]
    ranks = [load(results, case_checkpoint(models, variant, tp, pp, flags), r) for r in range(tp * pp)]
    for other in ranks[1:]:  # every rank returns the same tokens
        assert torch.equal(other["output_ids"], ranks[0]["output_ids"])
    ours = ranks[0]
    single = run_ours(ModelRunner.from_dir(case_checkpoint(models, variant, 1, 1, flags), device="cpu"), prompts())
    assert torch.equal(ours["output_ids"], single["output_ids"])
    assert torch.equal(ours["sequence_lengths"], single["sequence_lengths"])
    assert rel_err(ours["context_logits"], single["context_logits"]) <= FP32_TOL
    if not flags.get("use_weight_only"):
        batch = prompts()
        assert_matches_reference(ours, reference(models.hf(variant), batch), batch, FP32_TOL)


def ckpt_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckpt_eval.run_cli", *args]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval-mpi-prompts") / "prompts.csv"
    path.write_text("1,2,3,4,5\n9,8,7\n")
    return path


def test_ckpt_run_under_mpirun_prints_the_single_rank_output(models, prompt_file):
    flags = ["--input_file", str(prompt_file), "--max_output_len", "12", "--device", "cpu"]
    single = subprocess.run(
        ckpt_run("--checkpoint_dir", str(models.checkpoint("llama-gqa")), *flags),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr
    multi = mpirun(*ckpt_run("--checkpoint_dir", str(models.checkpoint("llama-gqa", 1, 2)), *flags))
    assert multi.returncode == 0, multi.stderr
    assert multi.stdout == single.stdout and single.stdout.count("Output [Text") == 2


def test_torchrun_launch(models, prompt_file):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    flags = ["--input_file", str(prompt_file), "--max_output_len", "12", "--device", "cpu"]
    single = subprocess.run(
        ckpt_run("--checkpoint_dir", str(models.checkpoint("gptneox")), *flags),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    multi = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            "-m",
            "ckpt_eval.run_cli",
            "--checkpoint_dir",
            str(models.checkpoint("gptneox", 2, 1)),
            *flags,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        env=env,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout == single.stdout


def test_launched_ranks_must_match_world_size(models, prompt_file):
    proc = mpirun(
        *ckpt_run("--checkpoint_dir", str(models.checkpoint("llama-gqa")), "--input_file", str(prompt_file)),
        timeout=120,
    )
    assert proc.returncode != 0
    assert "mapping.world_size is 1 (tp 1 x pp 1) but 2 process(es) were launched" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_rank_failing_to_load_stops_the_others(models, prompt_file, tmp_path):
    good = models.checkpoint("llama-gqa", 2, 1)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    with open(bad / "rank1.safetensors", "r+b") as f:
        f.truncate(1000)
    common = ["--input_file", str(prompt_file), "--device", "cpu"]
    proc = mpirun(
        *ckpt_run("--checkpoint_dir", str(good), *common),
        ":",
        "-n",
        "1",
        *ckpt_run("--checkpoint_dir", str(bad), *common),
        n=1,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "rank1.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_a_rank_failing_mid_run_stops_the_others(models, prompt_file, tmp_path):
    """Rank 1 gets a prompt too long for the model while rank 0 already waits in the pipeline: no hang."""
    long_prompt = tmp_path / "long.csv"
    long_prompt.write_text(",".join(["5"] * 200) + "\n")
    ckpt = str(models.checkpoint("llama-gqa", 1, 2))
    proc = mpirun(
        *ckpt_run("--checkpoint_dir", ckpt, "--input_file", str(prompt_file)),
        ":",
        "-n",
        "1",
        *ckpt_run("--checkpoint_dir", ckpt, "--input_file", str(long_prompt)),
        n=1,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "exceed the model's max_position_embeddings 128" in proc.stderr


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2:])
