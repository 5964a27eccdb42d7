"""A .nemo archive may not fill the disk: members are bounded by what the tar headers claim, the claims by the free
space and (compressed archives) by an expansion ratio, and sparse members are refused. Nothing is left behind."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.reliability.helpers import assert_failed_cleanly, convert_here

NEMO1 = Path(__file__).resolve().parents[1] / "fixtures" / "nemo" / "llama_tp1.nemo"


def _disk_used(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks (a bomb's payload without holding it in memory)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_gzip_bomb_is_refused_before_extracting(tmp_path, capsys):
    bomb, size = tmp_path / "bomb.nemo", 160 << 20
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:
        with tarfile.open(NEMO1) as fixture:
            info = fixture.getmember("./model_config.yaml")
            tar.addfile(info, fixture.extractfile(info))
        info = tarfile.TarInfo("./model_weights.ckpt")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    assert bomb.stat().st_size < 1 << 20
    out = tmp_path / "out"
    rc, _, err = convert_here("nemo", "--nemo_ckpt_path", bomb, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, str(bomb), "would expand from", "refused")
    assert _disk_used(tmp_path) < bomb.stat().st_size + (1 << 20)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar makes the sparse member")
def test_sparse_member_is_refused(tmp_path, capsys):
    """GNU tar stores a 4 GB hole in a few kB; extracting it would write 4 GB of zeros."""
    work = tmp_path / "src"
    work.mkdir()
    with tarfile.open(NEMO1) as fixture:
        (work / "model_config.yaml").write_bytes(fixture.extractfile("./model_config.yaml").read())
    with open(work / "model_weights.ckpt", "wb") as f:
        f.truncate(4 << 30)
    archive = tmp_path / "sparse.nemo"
    subprocess.run(["tar", "-cSf", str(archive), "-C", str(work), "."], check=True)
    (work / "model_weights.ckpt").unlink()
    assert archive.stat().st_size < 1 << 20
    out = tmp_path / "out"
    rc, _, err = convert_here("nemo", "--nemo_ckpt_path", archive, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, str(archive), "model_weights.ckpt", "sparse")
    assert _disk_used(tmp_path) < 1 << 20


def test_claims_beyond_the_free_space_are_refused(tmp_path, capsys):
    """A member of 8 TB (a hole in the archive file): refused before a byte is written."""
    archive = tmp_path / "huge.nemo"
    with tarfile.open(archive, "w") as tar, tarfile.open(NEMO1) as fixture:
        info = fixture.getmember("./model_config.yaml")
        tar.addfile(info, fixture.extractfile(info))
    claim = tarfile.TarInfo("./model_weights.ckpt")
    claim.size = 8 << 40
    with open(archive, "r+b") as f:  # the header goes where tarfile put the end-of-archive blocks
        f.seek(_end_of_members(archive))
        f.write(claim.tobuf(tarfile.GNU_FORMAT))
        f.truncate(f.tell() + claim.size + 1024)  # the data: a hole (the archive file itself is sparse)
    out = tmp_path / "out"
    rc, _, err = convert_here("nemo", "--nemo_ckpt_path", archive, "--output_dir", out, capsys=capsys)
    assert_failed_cleanly(rc, err, out, str(archive), "extracting needs", "GB free")
    assert _disk_used(tmp_path) < 1 << 20


def _end_of_members(archive: Path) -> int:
    with tarfile.open(archive) as tar:
        last = tar.getmembers()[-1]
        return last.offset_data + (last.size + 511) // 512 * 512
