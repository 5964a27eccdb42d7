"""What --output_dir and --overwrite may replace: only an engine directory we wrote, never an input or a user's files.

The cases a user hit: the checkpoints' parent folder as --output_dir with --overwrite (it replaced 40
checkpoints with one engine), the checkpoint itself as --output_dir, `.`, and a folder holding notes.txt.
"""

from __future__ import annotations

import pytest
from checkpoints import layout_config, random_checkpoint
from conftest import run_cli

LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm86"]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """ck/llama (the input) beside ck/other (another checkpoint); the cwd is a work folder with a file in it."""
    ck = tmp_path / "ck"
    random_checkpoint(ck / "llama", layout_config("llama-gqa"))
    random_checkpoint(ck / "other", layout_config("llama-gqa"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    return ck


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        ("ck", "would replace the input"),  # the checkpoint's parent
        ("ck/llama", "would replace the input"),  # the checkpoint itself
        ("ck/llama/engine", "inside the input"),
        (".", "current directory"),
        ("..", "current directory"),
        ("/", "refusing"),
    ],
)
def test_output_that_would_destroy_inputs_or_cwd_is_refused(tree, output, fragment):
    root = tree.parent
    before = snapshot(root)
    out = output.replace("ck", str(tree)) if output.startswith("ck") else output
    rc, _, err = run_cli("--checkpoint_dir", tree / "llama", "--output_dir", out, "--overwrite", *LIMITS)
    assert rc == 1 and "Traceback" not in err and fragment in err, err
    assert snapshot(root) == before


@pytest.mark.trt
def test_overwrite_replaces_our_engine_but_not_a_users_folder(tree):
    engine = tree.parent / "engine"
    assert run_cli("--checkpoint_dir", tree / "llama", "--output_dir", engine, *LIMITS)[0] == 0
    rc, _, err = run_cli("--checkpoint_dir", tree / "llama", "--output_dir", engine, *LIMITS)
    assert rc == 1 and "--overwrite" in err
    rc, _, err = run_cli("--checkpoint_dir", tree / "other", "--output_dir", engine, "--overwrite", *LIMITS)
    assert rc == 0, err
    (engine / "notes.txt").write_text("added by the user")
    rc, _, err = run_cli("--checkpoint_dir", tree / "llama", "--output_dir", engine, "--overwrite", *LIMITS)
    assert rc == 1 and "left alone" in err and (engine / "notes.txt").read_text() == "added by the user"
    assert oct((engine).stat().st_mode & 0o777) in ("0o755", "0o775", "0o777")
