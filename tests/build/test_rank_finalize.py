"""``ckpt-build --rank R`` per task, then ``--finalize``: the same engine directory as one ``ckpt-build``, and
every inconsistency of the staged ranks refused in one line with nothing published and nothing staged lost."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import layout_config, random_checkpoint
from conftest import run_cli

from ckptfmt.engine import check_engine_dir

pytestmark = pytest.mark.trt

LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm86"]
WORLD = 4  # tp 2 x pp 2


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, staging area with all four ranks, the engine directory of one plain ckpt-build)."""
    root = tmp_path_factory.mktemp("ranks")
    ckpt = random_checkpoint(root / "ckpt", layout_config("llama-gqa", tp=2, pp=2))
    plain = root / "plain"
    assert run_cli("--checkpoint_dir", ckpt, "--output_dir", plain, *LIMITS)[0] == 0
    for rank in range(WORLD):
        rc, out, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", root / "engine", *LIMITS, "--rank", rank)
        assert rc == 0 and f"built rank {rank} of 4" in out, err
    return ckpt, root / ".engine.ranks", plain


@pytest.fixture
def staged(built, tmp_path) -> tuple[Path, Path, Path]:
    """(checkpoint, a private copy of the staging area, its engine directory, not yet published)."""
    ckpt, staging, _ = built
    shutil.copytree(staging, tmp_path / ".engine.ranks")
    return ckpt, tmp_path / ".engine.ranks", tmp_path / "engine"


def finalize(ckpt: Path, engine: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("--checkpoint_dir", ckpt, "--output_dir", engine, *LIMITS, *extra, "--finalize")


def refused(ckpt: Path, staging: Path, engine: Path, fragment: str, *extra: str) -> None:
    before = sorted(p.name for p in staging.iterdir())
    rc, out, err = finalize(ckpt, engine, *extra)
    assert rc == 1 and err.startswith("ckpt-build: error: ") and err.count("\n") == 1 and fragment in err, err
    assert not engine.exists() and sorted(p.name for p in staging.iterdir()) == before
    assert not list(engine.parent.glob(".engine.tmp-*"))


def test_finalized_directory_equals_one_ckpt_build(built, staged):
    ckpt, staging, engine = staged
    plain = built[2]
    rc, out, err = finalize(ckpt, engine)
    assert rc == 0 and "finalized 4 engine(s)" in out and "rank build times 0:" in out, err
    assert not staging.exists()  # published: the staging area is gone
    check_engine_dir(engine, hash_files=True)
    assert json.loads((engine / "config.json").read_text()) == json.loads((plain / "config.json").read_text())
    files = sorted(p.name for p in engine.iterdir())
    assert (
        files
        == sorted(p.name for p in plain.iterdir())
        == [
            "config.json",
            "manifest.json",
            *(f"rank{r}.engine" for r in range(WORLD)),
        ]
    )
    # Plans are not byte-identical: two plain builds of one checkpoint already differ in a few hundred bytes of
    # ~3 MB (TensorRT-RTX embeds per-build values); sizes, and so the manifest's entries less sha256, are equal.
    ours, theirs = (json.loads((d / "manifest.json").read_text())["files"] for d in (engine, plain))
    assert {k: v["size"] for k, v in ours.items()} == {k: v["size"] for k, v in theirs.items()}
    for r in range(WORLD):
        a, b = (engine / f"rank{r}.engine").read_bytes(), (plain / f"rank{r}.engine").read_bytes()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) < len(a) // 1000


def test_missing_rank_is_refused(staged):
    ckpt, staging, engine = staged
    for p in staging.glob("rank3.*"):
        p.unlink()
    refused(ckpt, staging, engine, "rank 3 of 4 missing")


def test_rank_stopped_unfinished_is_named(staged):
    ckpt, staging, engine = staged
    for p in staging.glob("rank2.*.engine"):
        p.rename(p.with_name(p.name + ".partial"))
    for p in staging.glob("rank2.*.json"):
        p.unlink()
    refused(ckpt, staging, engine, "rank 2 of 4 missing (rank 2: a build stopped unfinished)")


def test_rank_built_twice_is_refused(staged):
    ckpt, staging, engine = staged
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", engine, *LIMITS, "--rank", "1")
    assert rc == 0, err
    refused(ckpt, staging, engine, "rank 1 built twice")


def test_rank_built_with_other_settings_is_refused(staged):
    ckpt, staging, engine = staged
    for p in staging.glob("rank2.*"):
        p.unlink()
    other = [*LIMITS[:1], "4", *LIMITS[2:]]
    assert run_cli("--checkpoint_dir", ckpt, "--output_dir", engine, *other, "--rank", "2")[0] == 0
    refused(ckpt, staging, engine, "rank 2 was built with build_config.max_batch_size = 4, these flags give 2")


def test_finalize_with_other_flags_than_the_ranks_is_refused(staged):
    ckpt, staging, engine = staged
    refused(ckpt, staging, engine, "build_config.logits_dtype", "--logits_dtype", "float16")


def test_ranks_of_different_tensorrt_versions_are_refused(staged):
    ckpt, staging, engine = staged
    record = next(staging.glob("rank3.*.json"))
    data = json.loads(record.read_text())
    data["engine"]["bound_to"]["module_version"] = "1.6.0.1"  # what another image's TensorRT would record
    record.write_text(json.dumps(data))
    refused(ckpt, staging, engine, "rank 3 was built with tensorrt_rtx 1.6.0.1 for sm86")


def test_truncated_plan_is_refused(staged):
    ckpt, staging, engine = staged
    plan = next(staging.glob("rank0.*.engine"))
    plan.write_bytes(plan.read_bytes()[:1000])
    refused(ckpt, staging, engine, "1000 bytes, its record says")


def test_finalize_without_staging_and_rank_out_of_range(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt", layout_config("llama-gqa", tp=2))
    rc, _, err = finalize(ckpt, tmp_path / "engine")
    assert rc == 1 and "no staging area" in err and err.count("\n") == 1, err
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "engine", *LIMITS, "--rank", "2")
    assert rc == 1 and "--rank 2: the checkpoint has 2 rank(s), 0 to 1" in err and err.count("\n") == 1, err
    assert not (tmp_path / ".engine.ranks").exists() and not (tmp_path / "engine").exists()


def test_existing_output_is_kept_and_a_users_file_in_staging_survives(staged):
    ckpt, staging, engine = staged
    engine.mkdir()
    (engine / "notes.txt").write_text("mine")
    refused_err = finalize(ckpt, engine)[2]
    assert "already exists" in refused_err and (engine / "notes.txt").read_text() == "mine"
    shutil.rmtree(engine)
    (staging / "notes.txt").write_text("mine too")
    rc, _, err = finalize(ckpt, engine)
    assert rc == 0, err
    assert sorted(p.name for p in staging.iterdir()) == ["notes.txt"]  # ours removed, the user's left


def test_corrupt_rank_file_fails_only_its_rank(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt", layout_config("llama-gqa", tp=2))
    data = bytearray((ckpt / "rank1.safetensors").read_bytes())
    data[-1] ^= 0xFF  # a flipped byte in the last tensor: only the sha256 tells
    (ckpt / "rank1.safetensors").write_bytes(bytes(data))
    engine = tmp_path / "engine"
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", engine, *LIMITS, "--rank", "1")
    assert rc == 1 and "rank1.safetensors: sha256 checksum mismatch" in err and err.count("\n") == 1, err
    assert run_cli("--checkpoint_dir", ckpt, "--output_dir", engine, *LIMITS, "--rank", "0")[0] == 0
    assert [p.name.split(".")[0] for p in sorted((tmp_path / ".engine.ranks").iterdir())] == ["rank0", "rank0"]
    refused(ckpt, tmp_path / ".engine.ranks", engine, "rank 1 of 2 missing")


def test_sigterm_during_a_rank_build_stages_nothing(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt", layout_config("llama-gqa", tp=2, num_hidden_layers=8))
    cmd = [sys.executable, "-m", "ckpt_build.cli", "--checkpoint_dir", str(ckpt), "--output_dir", str(tmp_path / "e")]
    proc = subprocess.Popen([*cmd, *LIMITS, "--rank", "1"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "TensorRT builds the plan" in line:  # the plan is streaming to its .partial file now
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143 and "Traceback" not in rest, rest
    staging = tmp_path / ".e.ranks"
    assert not staging.exists() or not any(staging.iterdir())
    assert "ranks 0, 1 of 2 missing" in finalize(ckpt, tmp_path / "e")[2]


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(plan="../../outside.engine"),  # a record may only name the plan beside it
        lambda d: d.pop("size"),
        lambda d: d["engine"].pop("bound_to"),
        lambda d: d.update(rank=2),
    ],
)
def test_malformed_record_is_refused_in_one_line(staged, edit):
    ckpt, staging, engine = staged
    record = next(staging.glob("rank1.*.json"))
    data = json.loads(record.read_text())
    edit(data)
    record.write_text(json.dumps(data))
    refused(ckpt, staging, engine, f"{record.name}: not a ckpt-build-rank/1 record for rank 1; build that rank again")


def test_file_size_limit_during_a_rank_build_is_one_line_and_stages_nothing(tmp_path):
    """Plans are ~2.6 MB: at a 1 MB limit (as a full disk would) the staged plan's write fails."""
    ckpt = random_checkpoint(tmp_path / "ckpt", layout_config("llama-gqa", tp=2))

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))

    out = tmp_path / "e"
    cmd = [sys.executable, "-m", "ckpt_build.cli", "--checkpoint_dir", str(ckpt), "--output_dir", str(out)]
    done = subprocess.run(
        [*cmd, *LIMITS, "--rank", "0", "--log_level", "warning"], capture_output=True, text=True, preexec_fn=limit
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"ckpt-build: error: {out}: cannot write rank0.") and "File too large" in done.stderr
    assert not any((tmp_path / ".e.ranks").iterdir()) and not out.exists()
