"""``ckpt-convert jax`` on bad input: one ``error:`` line naming the file, step or leaf, exit 1, no output left.

Each case damages a copy of a fixture orbax or flax wrote (tests/convert/jax) or hands a model config that does not
fit it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.convert.conftest import run_cli

FIXTURES = Path(__file__).resolve().parent / "jax"
LLAMA = FIXTURES / "llama"


def fails(tmp_path: Path, capsys, checkpoint: Path, config: Path = LLAMA / "hf", *flags: object) -> str:
    out = tmp_path / "out"
    argv = ("jax", "--checkpoint_dir", checkpoint, "--model_config", config, *flags, "--output_dir", out, "--quiet")
    rc, stdout, err = run_cli(*argv, capsys=capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return err


def copy(name: str, tmp_path: Path) -> Path:
    src, dst = LLAMA / name, tmp_path / "src" / name
    dst.parent.mkdir(exist_ok=True)
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def config_with(tmp_path: Path, **changes: object) -> Path:
    data = json.loads((LLAMA / "hf" / "config.json").read_text())
    data.update(changes)
    path = tmp_path / "cfg" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_missing_step(tmp_path, capsys):
    err = fails(tmp_path, capsys, LLAMA / "manager", LLAMA / "hf", "--step", 7)
    assert "--step 7: no such step in" in err and "(steps found: 1, 2)" in err


def test_step_of_a_single_checkpoint(tmp_path, capsys):
    err = fails(tmp_path, capsys, LLAMA / "ocdbt", LLAMA / "hf", "--step", 2)
    assert "is one checkpoint, not a folder of step folders" in err


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "not an orbax or flax checkpoint" in fails(tmp_path, capsys, tmp_path / "empty")


@pytest.mark.parametrize("layout", ["ocdbt", "flax.msgpack"])
def test_shapes_do_not_match_config(layout, tmp_path, capsys):
    err = fails(tmp_path, capsys, LLAMA / layout, config_with(tmp_path, intermediate_size=20))
    assert "model.layers.0.mlp" in err and "[24, 16] does not match config.json" in err and "needs [20, 16]" in err


def test_more_layers_than_config(tmp_path, capsys):
    err = fails(tmp_path, capsys, LLAMA / "per_array", config_with(tmp_path, num_hidden_layers=1))
    assert "layer 1, but the model config has 1 layers" in err


def test_leaf_larger_than_any_tensor(tmp_path, capsys):
    """A zarr header claiming a huge array is refused before anything is allocated or read."""
    ckpt = copy("per_array", tmp_path)
    zarray = ckpt / "model.embed_tokens.embedding" / ".zarray"
    header = json.loads(zarray.read_text())
    header["shape"] = [10**9, 10**6]
    zarray.write_text(json.dumps(header))
    err = fails(tmp_path, capsys, ckpt)
    assert "shape [1000000000, 1000000] does not match the model config (larger than any tensor" in err


def test_unknown_parameter(tmp_path, capsys):
    path = copy("flax.msgpack", tmp_path)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"lm_head", b"lm_hexx"))  # same length: still valid msgpack
    err = fails(tmp_path, capsys, path)
    assert "unknown parameter lm_hexx/kernel" in err


def test_unknown_parameter_in_orbax_metadata(tmp_path, capsys):
    ckpt = copy("ocdbt", tmp_path)
    meta = json.loads((ckpt / "_METADATA").read_text())
    entry = dict(next(iter(meta["tree_metadata"].values())))
    entry["key_metadata"] = [{"key": "optimizer_moment", "key_type": 2}]
    meta["tree_metadata"]["('optimizer_moment',)"] = entry
    (ckpt / "_METADATA").write_text(json.dumps(meta))
    assert "unknown parameter optimizer_moment" in fails(tmp_path, capsys, ckpt)


def test_gemma_tree_with_llama_config(tmp_path, capsys):
    assert "unknown parameter embedder/input_embedding" in fails(tmp_path, capsys, FIXTURES / "gemma3" / "ocdbt")


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"tree_metadata": 3}', b"[]"])
def test_corrupted_metadata(content, tmp_path, capsys):
    ckpt = copy("ocdbt", tmp_path)
    (ckpt / "_METADATA").write_bytes(content)
    assert "_METADATA: corrupted orbax metadata" in fails(tmp_path, capsys, ckpt)


def test_corrupted_array_data(tmp_path, capsys):
    ckpt = copy("per_array", tmp_path)
    (ckpt / "model.embed_tokens.embedding" / ".zarray").write_text("{")
    assert "leaf model.embed_tokens.embedding: cannot open" in fails(tmp_path, capsys, ckpt)


def test_missing_ocdbt_data(tmp_path, capsys):
    ckpt = copy("ocdbt", tmp_path)
    for data in ckpt.glob("**/d/*"):
        data.write_bytes(b"")
    err = fails(tmp_path, capsys, ckpt)
    assert "cannot open" in err or "cannot read" in err


@pytest.mark.parametrize("cut", [1, 100, -3])
def test_truncated_msgpack(cut, tmp_path, capsys):
    path = copy("flax.msgpack", tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    assert "not a flax msgpack file" in fails(tmp_path, capsys, path)


def test_link_out_of_the_checkpoint(tmp_path, capsys):
    ckpt = copy("per_array", tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.move(ckpt / "lm_head.kernel", outside)
    (ckpt / "lm_head.kernel").symlink_to(outside)
    err = fails(tmp_path, capsys, ckpt)
    assert "lm_head.kernel: a checkpoint file is a link to" in err and "outside the source directory" in err


def test_msgpack_link_out_of_the_folder(tmp_path, capsys):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "flax_model.msgpack").symlink_to(LLAMA / "flax.msgpack")
    assert "is a link to" in fails(tmp_path, capsys, folder)


@pytest.mark.parametrize("victim", ["_METADATA", "model.norm.weight/.zarray"])
def test_named_pipe_is_refused_not_waited_on(victim, tmp_path, capsys):
    ckpt = copy("per_array", tmp_path)
    (ckpt / victim).unlink()
    os.mkfifo(ckpt / victim)
    assert "not a regular file" in fails(tmp_path, capsys, ckpt)


def test_one_step_folder_of_a_manager(tmp_path, capsys):
    """A step folder given as --checkpoint_dir: its params item is read (step 1: the embedding negated)."""
    out = tmp_path / "out"
    argv = ("jax", "--checkpoint_dir", LLAMA / "manager" / "1", "--model_config", LLAMA / "hf", "--output_dir", out)
    rc, _, err = run_cli(*argv, "--quiet", capsys=capsys)
    assert rc == 0, err
    (tmp_path / "again").mkdir()
    assert "--step 1: " in fails(tmp_path / "again", capsys, LLAMA / "manager" / "1", LLAMA / "hf", "--step", 1)


def test_links_inside_are_followed(tmp_path, capsys):
    ckpt = copy("per_array", tmp_path)
    shutil.move(ckpt / "lm_head.kernel", ckpt / "moved")
    (ckpt / "lm_head.kernel").symlink_to(ckpt / "moved")
    out = tmp_path / "out"
    argv = ("jax", "--checkpoint_dir", ckpt, "--model_config", LLAMA / "hf", "--output_dir", out, "--quiet")
    rc, _, err = run_cli(*argv, capsys=capsys)
    assert rc == 0, err


def test_model_type_without_jax_layout(tmp_path, capsys):
    gpt2 = {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 16, "vocab_size": 40, "n_positions": 64}
    err = fails(tmp_path, capsys, LLAMA / "ocdbt", config_with(tmp_path, **gpt2))
    assert "model_type 'gpt2' has no known JAX layout (known: gemma, gemma2, gemma3_text, llama" in err


@pytest.mark.parametrize("where", ["checkpoint", "parent", "config"])
def test_output_dir_may_not_replace_an_input(where, tmp_path, capsys):
    ckpt, config = copy("ocdbt", tmp_path), tmp_path / "hf"
    shutil.copytree(LLAMA / "hf", config)
    out = {"checkpoint": ckpt, "parent": ckpt.parent, "config": config}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ("jax", "--checkpoint_dir", ckpt, "--model_config", config, "--output_dir", out, "--overwrite", "--quiet")
    rc, _, err = run_cli(*argv, capsys=capsys)
    assert rc == 1 and "output directory would replace the input" in err and err.count("\n") == 1, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_without_tensorstore(tmp_path, capsys, monkeypatch):
    """The [jax] extra is needed for orbax checkpoints only: named in one line; msgpack files convert without it."""
    monkeypatch.setitem(sys.modules, "tensorstore", None)  # import fails as if not installed
    assert "needs tensorstore: pip install 'ckpt-convert[jax]'" in fails(tmp_path, capsys, LLAMA / "ocdbt")
    argv = ("jax", "--checkpoint_dir", LLAMA / "flax.msgpack", "--model_config", LLAMA / "hf")
    rc, _, err = run_cli(*argv, "--output_dir", tmp_path / "out", "--quiet", capsys=capsys)
    assert rc == 0, err
