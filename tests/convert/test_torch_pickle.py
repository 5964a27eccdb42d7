"""``torch_pickle``: torch.save files read without torch.load's memory map give what torch.load gives; damaged or
hostile archives are one ``CheckpointError`` line, with nothing allocated on the claims of the file."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ckpt_convert import torch_pickle
from ckpt_convert.torch_pickle import Region, TorchPickle
from ckptfmt import CheckpointError, to_numpy
from tests.convert.conftest import RunsCode

torch = pytest.importorskip("torch")


def _state() -> dict:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    return {
        "plain": base,
        "transposed": base.t(),  # a strided view of the same storage
        "row": base[2],  # a view at a storage offset
        "columns": base[1:5, 3:7],  # strided and offset
        "bf16": torch.linspace(-2, 2, 12, dtype=torch.bfloat16).reshape(3, 4),
        "int8": torch.arange(-5, 5, dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "not a tensor": 7,
    }


def _expect(value) -> np.ndarray:
    return to_numpy(value.detach())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_what_torch_load_reads(tmp_path, legacy):
    path = tmp_path / "w.bin"
    torch.save(_state(), path, _use_new_zipfile_serialization=not legacy)
    source = TorchPickle(Region(path))
    state = source.state_dict()
    assert state["not a tensor"] == 7
    for name, value in _state().items():
        if isinstance(value, torch.Tensor):
            got = state[name].read()
            assert got.dtype == _expect(value).dtype and got.shape == tuple(value.shape), name
            np.testing.assert_array_equal(got, _expect(value), err_msg=name)
            assert got.flags.c_contiguous and got.flags.writeable
    source.close()


def test_blob_inside_a_larger_file(tmp_path):
    """A torch.save blob at an offset (a tar member, a .distcp chunk) is read in place."""
    blob = io.BytesIO()
    torch.save({"x": torch.arange(10.0)}, blob)
    path = tmp_path / "container"
    path.write_bytes(os.urandom(1000) + blob.getvalue() + os.urandom(777))
    source = TorchPickle(Region(path, 1000, len(blob.getvalue()), "member"))
    np.testing.assert_array_equal(source.state_dict()["x"].read(), np.arange(10.0, dtype=np.float32))
    assert source.label == f"{path}:member"


def test_narrow_reads_a_box(tmp_path):
    path = tmp_path / "t.pt"
    full = torch.arange(4 * 6 * 5, dtype=torch.float16).reshape(4, 6, 5)
    torch.save(full, path)
    tensor = TorchPickle(Region(path)).root
    box = tensor.narrow((1, 2, 0), (2, 3, 5)).read()
    np.testing.assert_array_equal(box, _expect(full)[1:3, 2:5, :])


def _rewritten(src: Path, dst: Path, edit) -> Path:
    """A copy of zip ``src`` with each record passed through ``edit(name, data) -> (data, compress_type) | None``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if (out := edit(info.filename, zin.read(info))) is not None:
                zout.writestr(info.filename, out[0], compress_type=out[1])
    return dst


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda n, d: None if n.endswith("data/0") else (d, zipfile.ZIP_STORED), "storage record data/0 missing"),
        (lambda n, d: (d[:-4] if n.endswith("data/0") else d, zipfile.ZIP_STORED), "not 40 bytes long"),
        (lambda n, d: (d, zipfile.ZIP_DEFLATED if n.endswith("data/0") else zipfile.ZIP_STORED), "compressed"),
        (lambda n, d: None if n.endswith("data.pkl") else (d, zipfile.ZIP_STORED), "no single <archive>/data.pkl"),
        (lambda n, d: (d[:-3] if n.endswith("data.pkl") else d, zipfile.ZIP_STORED), "data.pkl is truncated"),
    ],
    ids=["missing-record", "short-record", "compressed-record", "no-pickle", "truncated-pickle"],
)
def test_damaged_archives_are_one_line(tmp_path, edit, message):
    torch.save({"x": torch.ones(10)}, tmp_path / "ok.bin")
    bad = _rewritten(tmp_path / "ok.bin", tmp_path / "bad.bin", edit)
    with pytest.raises(CheckpointError, match=message) as err:
        TorchPickle(Region(bad)).state_dict()["x"].read()
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"x": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cannot load") as err:
        TorchPickle(Region(path))
    assert str(path) in str(err.value)


def test_code_is_refused_without_running(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "w.bin"
    torch.save({"x": torch.ones(2), "y": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused: the pickle holds non-tensor objects"):
        TorchPickle(Region(path))
    assert not marker.exists()


def test_large_legacy_pickle_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "old.bin"
    torch.save({"x": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    monkeypatch.setattr(torch_pickle, "LEGACY_MAX", 1000)
    with pytest.raises(CheckpointError, match="legacy .* refused .* re-save it"):
        TorchPickle(Region(path))


def test_region_past_the_end_of_the_file(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"x": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="ends past the end of the file"):
        TorchPickle(Region(path, 10, path.stat().st_size, "m"))
