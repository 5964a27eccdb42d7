"""Broken Megatron-DeepSpeed checkpoints (copies of tests/fixtures/deepspeed/megds_*, broken per test): one ``error:``
line naming the file, field or tensor, exit 1, nothing written, no traceback."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import pytest

from tests.reliability.helpers import convert_here

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "deepspeed"
STEP = "global_step2"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def run(fixture: Path, tmp_path: Path, capsys, config: Path | None = None) -> str:
    """Convert; assert the failure contract; return the error line."""
    out = tmp_path / "out"
    argv = ["deepspeed", "--checkpoint_dir", fixture / "ckpt", "--model_config", config or fixture / "megatron.yaml"]
    rc, stdout, err = convert_here(*argv, "--output_dir", out, "--quiet", capsys=capsys)
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not stdout
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return lines[0]


def test_model_config_disagreeing_with_the_args_namespace(tmp_path, capsys):
    fixture = copy_fixture("megds_tp2", tmp_path)
    config = fixture / "megatron.yaml"
    config.write_text(config.read_text().replace("num_layers: 2", "num_layers: 3"))
    line = run(fixture, tmp_path, capsys)
    assert "mp_rank_00_model_states.pt: args.num_layers is 2, but" in line and "gives 3" in line


@pytest.mark.parametrize(
    ("victims", "expected"),
    [
        (["zero_pp_rank_1_mp_rank_01_optim_states.pt"], "zero_pp_rank_1_mp_rank_01_optim_states.pt: missing"),
        (["zero_pp_rank_0_mp_rank_01_model_states.pt"], "zero_pp_rank_0_mp_rank_01_model_states.pt: missing"),
        (
            [f"zero_pp_rank_{d}_mp_rank_01_{k}_states.pt" for d in (0, 1) for k in ("model", "optim")],
            "args.tensor_model_parallel_size is 2, but 1 tensor-parallel rank files were found",
        ),
    ],
)
def test_zero3_tensor_parallel_files_missing(tmp_path, capsys, victims, expected):
    fixture = copy_fixture("megds_zero3_tp2", tmp_path)
    for victim in victims:
        (fixture / "ckpt" / STEP / victim).unlink()
    assert expected in run(fixture, tmp_path, capsys)


@pytest.mark.parametrize(
    ("victims", "expected"),
    [
        (["layer_03-model_01-model_states.pt"], "layer_03-model_01-model_states.pt: missing (pipeline layer of tensor"),
        (
            ["layer_03-model_00-model_states.pt", "layer_03-model_01-model_states.pt"],
            "1 transformer layers found, --model_config says num_layers 2",
        ),
    ],
)
def test_pipeline_layer_files_missing(tmp_path, capsys, victims, expected):
    fixture = copy_fixture("megds_pipe_tp2", tmp_path)
    for victim in victims:
        (fixture / "ckpt" / STEP / victim).unlink()
    assert expected in run(fixture, tmp_path, capsys)


def _flip_stored_bytes(path: Path) -> None:
    """Change one byte in the middle of every tensor record of a torch zip (stored, uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        records = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8]
    with open(path, "r+b") as f:
        for info in records:
            f.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<26xHH", f.read(30))
            at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0x40]))


def test_tied_pipeline_copies_that_differ(tmp_path, capsys):
    fixture = copy_fixture("megds_pipe_tied", tmp_path)
    _flip_stored_bytes(fixture / "ckpt" / STEP / "layer_05-model_00-model_states.pt")
    line = run(fixture, tmp_path, capsys)
    assert "layer_05-model_00-model_states.pt: tied layer copy of word_embeddings.weight differs" in line


def test_args_namespace_holding_a_foreign_object_is_refused(tmp_path, capsys):
    """A class in the namespace beyond the allow-list is refused by name, never imported or called."""
    fixture = copy_fixture("megds_tp2", tmp_path)
    path = fixture / "ckpt" / STEP / "mp_rank_00_model_states.pt"
    with zipfile.ZipFile(path) as archive:
        members = [(i, archive.read(i)) for i in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in members:
            if info.filename.endswith("/data.pkl"):
                assert b"megatron.core.enums\nModelType\n" in data
                data = data.replace(b"megatron.core.enums\nModelType\n", b"os\nsystem\n")
            archive.writestr(info.filename, data)
    line = run(fixture, tmp_path, capsys)
    assert "mp_rank_00_model_states.pt: refused: the pickle holds non-tensor objects" in line and "os" in line
