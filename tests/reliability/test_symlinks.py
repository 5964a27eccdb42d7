"""Links out of the source directory are never followed: a tokenizer, config or weight file that points at a
secret (here a 0600 stand-in for /etc/shadow) is refused in one line and its content appears nowhere; links
inside the source (and a hub cache snapshot's ``../../blobs/``) still work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import shard as split_into_shards
from tests.reliability.helpers import SECRET, assert_failed_cleanly, assert_no_secret, convert_here, make_secret

NEMO2 = Path(__file__).resolve().parents[1] / "fixtures" / "nemo" / "nemo2_llama"


def _link_out(path: Path, secret: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(secret)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"])
def test_hf_link_out_of_the_model_dir_is_refused(model, tmp_path, name, capsys):
    secret = make_secret(tmp_path)
    _link_out(model / name, secret)
    out = tmp_path / "out"
    rc, stdout, err = convert_here("hf", "--model_dir", model, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, str(model / name), "outside the source directory")
    assert SECRET not in err + stdout


def test_hf_indexed_shard_linking_out_is_refused(model, tmp_path, capsys):
    split_into_shards(model)
    shard = sorted(model.glob("model-*.safetensors"))[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard.rename(elsewhere / shard.name)
    shard.symlink_to(elsewhere / shard.name)
    out = tmp_path / "out"
    rc, stdout, err = convert_here("hf", "--model_dir", model, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, str(shard), "a weight file")


def test_links_inside_the_model_dir_and_hub_cache_blobs_are_followed(tiny_llama, tmp_path, capsys):
    """A hub cache snapshot: every file a link to ../../blobs/<hash>; the tokenizer a link within the snapshot."""
    repo = tmp_path / "models--org--tiny"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, src in enumerate(p for p in sorted(tiny_llama.iterdir()) if p.name != "tokenizer.json"):
        shutil.copyfile(src, blobs / f"blob{i}")
        (snapshot / src.name).symlink_to(Path("../../blobs") / f"blob{i}")
    (snapshot / "tok").mkdir()
    (snapshot / "tok" / "tokenizer.json").write_text('{"model": {}}')
    (snapshot / "tokenizer.json").symlink_to("tok/tokenizer.json")
    out = tmp_path / "out"
    rc, stdout, err = convert_here("hf", "--model_dir", snapshot, "--output_dir", out, capsys=capsys)
    assert rc == 0, err
    assert (out / "tokenizer" / "tokenizer.json").read_text() == '{"model": {}}'


def _nemo2_copy(tmp_path: Path) -> Path:
    root = tmp_path / "nemo2"
    shutil.copytree(NEMO2, root)
    return root


@pytest.mark.parametrize(
    "rel", ["context/nemo_tokenizer/tokenizer.json", "context/model.yaml", "weights/__0_0.distcp"], ids=str
)
def test_nemo2_link_out_of_the_source_dir_is_refused(tmp_path, rel, capsys):
    root = _nemo2_copy(tmp_path)
    secret = make_secret(tmp_path)
    _link_out(root / rel, secret)
    out = tmp_path / "out"
    rc, stdout, err = convert_here("nemo", "--nemo_ckpt_path", root, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, str(root / rel), "outside the source directory")


def test_nemo2_tokenizer_directory_linked_out_is_refused(tmp_path, capsys):
    root = _nemo2_copy(tmp_path)
    stolen = tmp_path / "etc"
    stolen.mkdir()
    make_secret(stolen)
    shutil.rmtree(root / "context" / "nemo_tokenizer")
    (root / "context" / "nemo_tokenizer").symlink_to(stolen)
    out = tmp_path / "out"
    rc, stdout, err = convert_here("nemo", "--nemo_ckpt_path", root, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, "shadow", "outside the source directory")
    assert_no_secret(tmp_path)


def test_nemo2_with_its_own_files_still_converts(tmp_path, capsys):
    out = tmp_path / "out"
    root = _nemo2_copy(tmp_path)
    rc, _, err = convert_here("nemo", "--nemo_ckpt_path", root, "--output_dir", out, capsys=capsys)
    assert rc == 0, err
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["nemo2", "out"]
