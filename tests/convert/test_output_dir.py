"""``--output_dir`` safety in ``ckpt-convert`` (hf and nemo): never an input, an ancestor of one or the current
directory; ``--overwrite`` replaces a previous conversion, never a directory holding someone else's files."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from tests.convert.conftest import run_cli

NEMO_DIR_SOURCE = Path(__file__).resolve().parents[1] / "fixtures" / "megatron" / "llama_tp1"
NEMO_CONFIG = NEMO_DIR_SOURCE.parent / "llama.yaml"


def convert(source: str, model: Path, out, capsys, *flags: str) -> tuple[int, str]:
    if source == "hf":
        argv = ["hf", "--model_dir", model]
    else:
        argv = ["nemo", "--nemo_ckpt_path", model, "--model_config", NEMO_CONFIG]
    rc, _, err = run_cli(*argv, "--output_dir", out, "--quiet", *flags, capsys=capsys)
    return rc, err


@pytest.fixture(params=["hf", "nemo"])
def source(request, tiny_hf, tmp_path) -> tuple[str, Path]:
    """(subcommand, a private copy of a source directory under tmp_path/inputs/)."""
    original = tiny_hf("llama-gqa") if request.param == "hf" else NEMO_DIR_SOURCE
    if request.param == "nemo":
        pytest.importorskip("torch")
    return request.param, Path(shutil.copytree(original, tmp_path / "inputs" / "model"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def assert_refused(rc: int, err: str, *fragments: str) -> None:
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("where", ["source", "parent", "grandparent"])
def test_output_dir_is_the_source_or_holds_it(where, source, capsys):
    kind, model = source
    out = {"source": model, "parent": model.parent, "grandparent": model.parent.parent}[where]
    before = snapshot(model)
    rc, err = convert(kind, model, out, capsys, "--overwrite")
    assert_refused(rc, err, "output directory would replace the input")
    assert snapshot(model) == before
    assert not list(out.parent.glob(f".{out.name}.*")), "temp dir left behind"


def test_output_dir_dot_is_refused_in_one_line(source, tmp_path, monkeypatch, capsys):
    kind, model = source
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for flags in ((), ("--overwrite",)):
        rc, err = convert(kind, model, ".", capsys, *flags)
        assert_refused(rc, err, "current directory")
        assert "Device or resource busy" not in err
    assert list(work.iterdir()) == []


def test_overwrite_leaves_a_users_directory_alone(source, tmp_path, capsys):
    kind, model = source
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    rc, err = convert(kind, model, out, capsys)
    assert_refused(rc, err, "already exists (pass --overwrite")
    rc, err = convert(kind, model, out, capsys, "--overwrite")
    assert_refused(rc, err, "--overwrite replaces only", "left alone")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dir left behind"


def test_overwrite_replaces_a_previous_conversion(source, tmp_path, capsys):
    kind, model = source
    out = tmp_path / "out"
    rc, err = convert(kind, model, out, capsys, "--dtype", "float32")
    assert rc == 0, err
    rc, err = convert(kind, model, out, capsys, "--dtype", "float16")
    assert_refused(rc, err, "already exists (pass --overwrite")
    rc, err = convert(kind, model, out, capsys, "--dtype", "float16", "--overwrite")
    assert rc == 0, err
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert stat.S_IMODE(out.stat().st_mode) & 0o055 == 0o055, "published with a private (temp dir) mode"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "out"], "temp or old dir left behind"
