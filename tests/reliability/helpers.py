"""Shared by the reliability tests: run the real console script, and check a failed run left nothing behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

CONSOLE = str(Path(sys.executable).parent / "ckpt-convert")
CKPTFMT = str(Path(sys.executable).parent / "ckptfmt")
SECRET = "root:$6$s3cr3t-hash-that-must-never-be-copied:19000:0:99999:7:::"


def make_secret(directory: Path) -> Path:
    """A stand-in for /etc/shadow: mode 0600, content no output may ever hold."""
    path = directory / "shadow"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def convert(*argv: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``ckpt-convert ARGV`` in a subprocess (text output captured)."""
    cmd = [CONSOLE, *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def convert_here(*argv: str | Path, capsys) -> tuple[int, str, str]:
    """``ckpt-convert ARGV`` in this process (fast: nothing to import again); (exit code, stdout, stderr)."""
    from ckpt_convert.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def start(*argv: str | Path, output: bool = True) -> subprocess.Popen:
    """``ckpt-convert ARGV`` started in its own session (so a test can kill it without killing pytest); without
    ``output`` nothing is piped (orphaned workers holding a pipe would block ``communicate``)."""
    cmd = [CONSOLE, *map(str, argv)]
    pipe = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60, poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def leftovers(out: Path) -> list[str]:
    """What a run on ``out`` left beside it (temp dirs, extraction dirs, old outputs; the lock file is harmless)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*") if p.name != f".{out.name}.lock")


def assert_failed_cleanly(rc: int, err: str, out: Path, *fragments: str, secret: bool = True) -> None:
    """Exit 1, exactly one ``error:`` line (naming ``fragments``), no traceback, nothing published or left over."""
    assert rc == 1, f"exit {rc}: {err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip("\n").splitlines()[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], err
    assert not out.exists(), "partial output published"
    assert leftovers(out) == [], f"left beside the output: {leftovers(out)}"
    if secret:
        assert_no_secret(out.parent)


def assert_no_secret(root: Path) -> None:
    """The secret's content is in no file under ``root`` except the secret itself."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "shadow" and path.stat().st_size < 1 << 30:
            assert SECRET.encode() not in path.read_bytes(), f"secret copied into {path}"


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(processes: list[psutil.Process], timeout: float = 5) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert alive == [], f"still running after {timeout} s: {[p.pid for p in alive]}"


def kill_tree(proc: subprocess.Popen, others: list[psutil.Process] = ()) -> None:
    """Last resort for a test that failed midway: no process of ours (``others``: seen earlier) outlives it."""
    for child in [*descendants(proc.pid), *others]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    if proc.poll() is None:
        os.kill(proc.pid, 9)
    proc.communicate(timeout=30)


def validate(out: Path) -> subprocess.CompletedProcess:
    """``ckptfmt validate --require-manifest OUT`` (exit 0: valid)."""
    return subprocess.run([CKPTFMT, "validate", "--require-manifest", str(out)], capture_output=True, text=True)
