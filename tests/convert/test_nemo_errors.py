"""``ckpt-convert nemo`` on bad input: one ``error:`` line, exit 1, nothing left behind, no code executed."""

from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.convert.conftest import RunsCode, run_cli

torch = pytest.importorskip("torch")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NEMO1 = FIXTURES / "nemo" / "llama_tp1.nemo"
MCORE = FIXTURES / "megatron" / "llama_tp1"
MCORE_CONFIG = FIXTURES / "megatron" / "llama.yaml"


def convert_fails(source: Path, tmp_path: Path, capsys, *flags) -> str:
    """Run the conversion, assert it failed cleanly, return the error line."""
    parent = tmp_path / "outputs"
    parent.mkdir(exist_ok=True)
    out = parent / "ckpt"
    rc, stdout, err = run_cli("nemo", "--nemo_ckpt_path", source, "--output_dir", out, "--quiet", *flags, capsys=capsys)
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not out.exists()
    assert list(parent.iterdir()) == [], "temporary files left behind"
    return lines[0]


def unpacked(tmp_path: Path, archive: Path = NEMO1) -> Path:
    root = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def packed(root: Path, path: Path) -> Path:
    with tarfile.open(path, "w:") as tar:
        for item in sorted(root.rglob("*")):
            if item.is_file():
                tar.add(item, "./" + item.relative_to(root).as_posix())
    return path


def edit_config(root: Path, **changes) -> None:
    config = yaml.safe_load((root / "model_config.yaml").read_text())
    config.update(changes)
    (root / "model_config.yaml").write_text(yaml.safe_dump(config))


def test_missing_path(tmp_path, capsys):
    assert "no such file or directory" in convert_fails(tmp_path / "nope.nemo", tmp_path, capsys)


def test_not_a_tar_nor_a_directory(tmp_path, capsys):
    bogus = tmp_path / "model.nemo"
    bogus.write_text("just text\n" * 100)
    assert "not a .nemo archive" in convert_fails(bogus, tmp_path, capsys)


def test_truncated_archive(tmp_path, capsys):
    data = NEMO1.read_bytes()
    cut = tmp_path / "cut.nemo"
    cut.write_bytes(data[: len(data) // 2])
    error = convert_fails(cut, tmp_path, capsys)
    assert "cut.nemo" in error and ("truncated" in error or "corrupt" in error)


def test_member_escaping_the_extraction_dir_is_refused(tmp_path, capsys):
    evil = tmp_path / "evil.nemo"
    with tarfile.open(evil, "w:") as tar:
        tar.add(NEMO1, "../../escaped.bin")
    error = convert_fails(evil, tmp_path, capsys)
    assert "would extract outside" in error
    assert not list(tmp_path.rglob("escaped.bin")) and not (tmp_path.parent / "escaped.bin").exists()


def test_missing_model_config(tmp_path, capsys):
    root = unpacked(tmp_path)
    (root / "model_config.yaml").unlink()
    assert "missing model_config.yaml" in convert_fails(packed(root, tmp_path / "x.nemo"), tmp_path, capsys)


def test_invalid_yaml(tmp_path, capsys):
    root = unpacked(tmp_path)
    (root / "model_config.yaml").write_text("num_layers: [2\n")
    assert "model_config.yaml: not valid YAML" in convert_fails(packed(root, tmp_path / "x.nemo"), tmp_path, capsys)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"activation": "squared-relu"}, "activation 'squared-relu'"),
        ({"normalization": "layernorm1p"}, "normalization 'layernorm1p'"),
        ({"num_moe_experts": 8}, "num_moe_experts"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type 'alibi'"),
        ({"activation": "gelu"}, "rmsnorm with a gelu MLP"),
        ({"mcore_gpt": False}, "mcore_gpt: false"),
    ],
)
def test_unknown_megatron_variant_is_named(tmp_path, capsys, changes, named):
    root = unpacked(tmp_path)
    edit_config(root, **changes)
    error = convert_fails(packed(root, tmp_path / "x.nemo"), tmp_path, capsys)
    assert "unsupported Megatron variant" in error and named in error


def test_unknown_tensor_is_named(tmp_path, capsys):
    root = unpacked(tmp_path)
    state = torch.load(root / "model_weights.ckpt", weights_only=True)
    state["model.decoder.layers.0.self_attention.q_layernorm.weight"] = torch.ones(16)
    torch.save(state, root / "model_weights.ckpt")
    error = convert_fails(packed(root, tmp_path / "x.nemo"), tmp_path, capsys)
    assert "decoder.layers.0.self_attention.q_layernorm.weight" in error


def test_pickle_with_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    root = unpacked(tmp_path)
    state = torch.load(root / "model_weights.ckpt", weights_only=True)
    state["model.decoder.layers.0.self_attention.linear_proj._extra_state"] = RunsCode(marker)
    torch.save(state, root / "model_weights.ckpt")
    error = convert_fails(packed(root, tmp_path / "x.nemo"), tmp_path, capsys)
    assert "model_weights.ckpt: refused" in error and "non-tensor" in error
    assert not marker.exists()


def test_dist_metadata_with_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "mcore"
    shutil.copytree(MCORE, ckpt)
    (ckpt / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    error = convert_fails(ckpt, tmp_path, capsys, "--model_config", MCORE_CONFIG)
    assert ".metadata: unreadable checkpoint metadata (refused to load posix.system)" in error
    assert not marker.exists()


def test_truncated_dist_shard(tmp_path, capsys):
    ckpt = tmp_path / "mcore"
    shutil.copytree(MCORE, ckpt)
    shard = ckpt / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    error = convert_fails(ckpt, tmp_path, capsys, "--model_config", MCORE_CONFIG)
    assert "__0_0.distcp:chunk at byte" in error and "ends past the end of the file" in error


def test_megatron_checkpoint_needs_model_config(tmp_path, capsys):
    assert "--model_config" in convert_fails(MCORE, tmp_path, capsys)


def test_model_config_that_does_not_fit_the_tensors(tmp_path, capsys):
    config = yaml.safe_load(MCORE_CONFIG.read_text())
    config["num_layers"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert "stacked tensor" in convert_fails(MCORE, tmp_path, capsys, "--model_config", bad)


def test_target_tp_that_does_not_divide_the_heads(tmp_path, capsys):
    assert "tp_size" in convert_fails(NEMO1, tmp_path, capsys, "--tp_size", "3")


def test_dist_chunk_outside_the_checkpoint_is_refused(tmp_path, capsys):
    """A ``.metadata`` naming a chunk file outside its directory is refused, not read."""
    from ckpt_convert.megatron_dist import read_metadata

    ckpt = tmp_path / "mcore"
    shutil.copytree(MCORE, ckpt)
    metadata = read_metadata(ckpt)
    for info in metadata.storage_data.values():
        info.relative_path = "../elsewhere.distcp"
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    shutil.copy(ckpt / "__0_0.distcp", tmp_path / "elsewhere.distcp")
    error = convert_fails(ckpt, tmp_path, capsys, "--model_config", MCORE_CONFIG)
    assert "chunk file '../elsewhere.distcp' refused" in error
