"""The background writer's two byte paths (O_DIRECT through a staging buffer; buffered with early write-back) write
the same bytes and digest as the plain ``RankFileWriter``, for files of every size against the block and piece."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from ckptfmt import BackgroundRankFileWriter, RankFileWriter, direct
from ckptfmt import background as bg
from ckptfmt.writeback import WriteBack

PIECE = 3 * direct.ALIGN  # small staging buffer: many pieces, one partial at the end


def write(cls, path, tensors) -> dict:
    w = cls(path, {n: (a.dtype, a.shape) for n, a in tensors.items()})
    for n, a in tensors.items():
        w.write(n, a)
    return w.close()


def tensors_of(sizes: list[int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"t{i}": rng.integers(0, 255, n, dtype=np.uint8) for i, n in enumerate(sizes)}


@pytest.mark.parametrize("mode", ["direct", "buffered"])
@pytest.mark.parametrize("sizes", [[0], [1], [direct.ALIGN - 80], [PIECE], [5, PIECE - 1, 7, 3 * PIECE + 11]], ids=str)
def test_write_modes_match_the_plain_writer(mode, sizes, tmp_path, monkeypatch):
    opened = []

    def open_small(path):
        d = direct.open_direct(path, PIECE) if mode == "direct" else None
        opened.append(d)
        return d

    monkeypatch.setattr(bg, "open_direct", open_small)
    monkeypatch.setattr(bg, "WRITE_PIECE", 1000)  # buffered: several write-back calls per tensor
    monkeypatch.setattr(bg, "WriteBack", lambda fd: WriteBack(fd, kick=1, behind=2000))
    tensors = tensors_of(sizes, len(sizes))
    plain = write(RankFileWriter, tmp_path / "plain.safetensors", tensors)
    assert write(BackgroundRankFileWriter, tmp_path / "bg.safetensors", tensors) == plain
    assert (tmp_path / "bg.safetensors").read_bytes() == (tmp_path / "plain.safetensors").read_bytes()
    if mode == "direct" and opened[0] is None:
        pytest.skip("this filesystem refuses O_DIRECT (the buffered case covers it)")


def test_direct_refused_by_the_filesystem_is_none(tmp_path, monkeypatch):
    """EINVAL from the probe write (a filesystem without O_DIRECT) means None and an empty file: write buffered."""
    path = tmp_path / "f"
    path.write_bytes(b"")

    def refuse(fd, data, offset):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(direct.os, "pwrite", refuse)
    assert direct.open_direct(path) is None
    assert path.stat().st_size == 0


def test_write_error_reaches_the_caller(tmp_path, monkeypatch):
    """A write error in the write thread (disk full) is raised by the writer's next call, not lost."""

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "probe").write_bytes(b"")
    if direct.open_direct(tmp_path / "probe") is None:
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setattr(bg, "open_direct", lambda path: direct.open_direct(path, PIECE))
    tensors = tensors_of([4 * PIECE] * 4, 1)
    w = BackgroundRankFileWriter(tmp_path / "f.safetensors", {n: (a.dtype, a.shape) for n, a in tensors.items()})
    monkeypatch.setattr(direct.os, "pwrite", full)
    with pytest.raises(OSError) as err:
        for n, a in tensors.items():
            w.write(n, a)
        w.close()
    assert err.value.errno == errno.ENOSPC
    w.__exit__(OSError, None, None)
