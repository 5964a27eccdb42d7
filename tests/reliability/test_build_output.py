"""ckpt-build's output under faults: a full disk or an unwritable parent is one line naming --output_dir, and the
published engine directory always carries a manifest that catches a tampered plan.

The full disk is real: a subprocess whose file size limit (RLIMIT_FSIZE) lets the plan writes fail with EFBIG, and
where ``unshare`` and ``mount`` work (root), a 2 MB tmpfs in a private mount namespace (ENOSPC).
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.build.checkpoints import layout_config, random_checkpoint
from tests.reliability.helpers import leftovers

pytestmark = pytest.mark.trt
pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install 'ckpt-build[rtx]')")

CKPT_BUILD = str(Path(sys.executable).parent / "ckpt-build")
LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm86"]


@pytest.fixture(scope="module")
def tp2(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tp2", layout_config("llama-gqa", tp=2))


def build(ckpt: Path, out: Path | str, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = [CKPT_BUILD, "--checkpoint_dir", str(ckpt), "--output_dir", str(out), *LIMITS, "--log_level", "warning"]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=120, **kwargs)


def _file_size_limit(limit: int):
    def apply() -> None:  # writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored), as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def assert_one_line(proc: subprocess.CompletedProcess, out: Path, *fragments: str) -> str:
    """Exit 1, stderr is exactly one ``ckpt-build: error:`` line holding ``fragments``; nothing published or left."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckpt-build: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "TensorRT" not in proc.stderr
    assert not out.exists()
    assert leftovers(out) == []
    return lines[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_file_size_limit_while_streaming_a_plan_names_the_output(tp2, tmp_path, workers):
    """Plans are 4.3 MB: at a 1 MB limit the plan write fails (it used to say "no plan returned")."""
    out = tmp_path / "engine"
    proc = build(tp2, out, "--workers", workers, preexec_fn=_file_size_limit(1 << 20))
    line = assert_one_line(proc, out, f"{out}: cannot write rank", ".engine: File too large", "--output_dir")
    assert "no plan returned" not in line


def test_file_size_limit_beyond_the_plans_still_builds(tp2, tmp_path):
    out = tmp_path / "engine"
    proc = build(tp2, out, preexec_fn=_file_size_limit(8 << 20))
    assert proc.returncode == 0, proc.stderr


def _build_on_tmpfs(tp2, disk, size: str) -> tuple[subprocess.CompletedProcess, Path]:
    """ckpt-build into ``disk/engine`` where ``disk`` is a tmpfs of ``size``, mounted in a private mount namespace
    (gone with the process); skips the test where no tmpfs can be mounted."""
    disk.mkdir()
    out = disk / "engine"
    cmd = [CKPT_BUILD, "--checkpoint_dir", str(tp2), "--output_dir", str(out), *LIMITS, "--log_level", "warning"]
    script = f'mount -t tmpfs -o size={size} tmpfs "{disk}" || exit 77; "$@"; rc=$?; ls -A "{disk}" >&2; exit $rc'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *cmd], capture_output=True, text=True)
    if proc.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return proc, out


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_full_disk_says_the_disk_is_full(tp2, tmp_path):
    """A 2 MB tmpfs, mounted in a private mount namespace (gone with the process): ENOSPC on the first plan."""
    proc, out = _build_on_tmpfs(tp2, tmp_path / "disk", "2m")
    line = assert_one_line(proc, out, f"{out}: cannot write rank0.engine: the disk is full (No space left on device)")
    assert "the engines need more than the 2." in line and "MB free there" in line and "free space" in line


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_full_disk_after_the_plans_names_config_json_and_their_size(tp2, tmp_path):
    """A tmpfs exactly as large as the plans (measured by a first build): config.json is what no longer fits."""
    first = tmp_path / "first"
    assert build(tp2, first).returncode == 0
    pages = sum(-(-p.stat().st_size // 4096) for p in first.glob("rank*.engine"))
    proc, out = _build_on_tmpfs(tp2, tmp_path / "disk", f"{pages * 4}k")
    plans = sum(p.stat().st_size for p in first.glob("rank*.engine"))
    assert_one_line(
        proc, out, f"{out}: cannot write config.json: the disk is full", f"the plans alone need {plans / 1e6:.1f} MB"
    )


@pytest.mark.parametrize("where", ["file", "proc"])
def test_output_parent_that_cannot_be_written(tp2, tmp_path, where):
    """Root ignores 0555: a file where the parent directory should be, or a directory under /proc."""
    if where == "file":
        (tmp_path / "parent").write_text("not a directory\n")
        out = tmp_path / "parent" / "engine"
        fragments = [f"{out}: cannot write the engine directory: {tmp_path / 'parent'} is not a directory"]
    else:
        out = Path("/proc/self/ckpt-build-test/engine")
        fragments = [str(out.parent)]
    proc = build(tp2, out)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ckpt-build: error: "), proc.stderr
    assert all(f in proc.stderr for f in fragments), proc.stderr
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr


def test_published_engine_dir_has_a_manifest_that_catches_a_flipped_byte(tp2, tmp_path):
    from ckptfmt.engine import check_engine_dir
    from ckptfmt.errors import CheckpointError
    from ckptfmt.io import read_manifest

    out = tmp_path / "engine"
    proc = build(tp2, out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    check_engine_dir(out, hash_files=True)
    files = {p.name for p in out.iterdir()}
    assert set(read_manifest(out)) == files - {"manifest.json"} == {"config.json", "rank0.engine", "rank1.engine"}
    plan = out / "rank1.engine"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0x01
    plan.write_bytes(data)
    check_engine_dir(out, hash_files=False)  # same size: only the checksum tells
    with pytest.raises(CheckpointError, match=r"rank1\.engine: sha256 checksum mismatch"):
        check_engine_dir(out, hash_files=True)
