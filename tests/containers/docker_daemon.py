"""A private Docker daemon for the container tests: images cached, runtime state in a temp dir."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DockerDaemon:
    """A running dockerd and the environment that points the docker CLI (and compose) at it."""

    pid: int
    socket: Path
    config_dir: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.config_dir)
        env.pop("DOCKER_CONTEXT", None)
        return env

    def docker(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run the docker CLI against this daemon, capturing text output."""
        return subprocess.run(["docker", *args], env=self.env, check=check, text=True, capture_output=True, **kwargs)


def _wait_for_socket(socket: Path, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
        ping = subprocess.run(
            ["docker", "-H", f"unix://{socket}", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
        )
        if ping.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"dockerd did not answer on {socket} within {START_TIMEOUT_S:.0f} s; log {log}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM by PID (dockerd then stops its containerd), SIGKILL if it has not exited in time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One daemon per data root: a second test session waits here instead of corrupting it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def running_daemon(data_root: Path, run_dir: Path, compose_plugin: Path | None) -> Iterator[DockerDaemon]:
    """Start dockerd with images in `data_root` (kept) and sockets/exec state in `run_dir`; stop it by PID.

    The daemon runs without a bridge or iptables rules: the tests' builds use the host network
    (CKPT_BUILD_NETWORK=host, to reach the wheel index on 127.0.0.1 and the registries), services none.
    """
    with _exclusive(data_root.parent / f"{data_root.name}.lock"):
        run_dir.mkdir(parents=True, exist_ok=True)
        socket = run_dir / "docker.sock"
        log = run_dir / "dockerd.log"
        config_dir = run_dir / "docker-config"
        if compose_plugin is not None:
            plugins = config_dir / "cli-plugins"
            plugins.mkdir(parents=True, exist_ok=True)
            (plugins / "docker-compose").symlink_to(compose_plugin)
        command = [
            "dockerd",
            "--data-root", str(data_root),
            "--exec-root", str(run_dir / "exec"),
            "--host", f"unix://{socket}",
            "--pidfile", str(run_dir / "dockerd.pid"),
            "--bridge", "none",
            "--iptables=false",
            "--ip6tables=false",
        ]  # fmt: skip
        proc = _start(command, data_root, socket, log)
        try:
            yield DockerDaemon(pid=proc.pid, socket=socket, config_dir=config_dir, log=log)
        finally:
            _stop(proc)
            _unmount_under(run_dir)
            shutil.rmtree(run_dir / "exec", ignore_errors=True)


def _unmount_under(root: Path) -> None:
    """Unmount what dockerd leaves mounted in its exec root (the host network namespace file)."""
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4].replace("\\040", " ") for line in mountinfo]
    for point in sorted((p for p in points if Path(p).is_relative_to(root)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)


def _start_once(command: list[str], socket: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as log_handle:
        proc = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_socket(socket, log, proc)
    except RuntimeError:
        _stop(proc)
        raise
    return proc


def _start(command: list[str], data_root: Path, socket: Path, log: Path) -> subprocess.Popen:
    """Start dockerd; if it does not come up on the kept data root (say, left corrupt by a kill), start afresh."""
    try:
        return _start_once(command, socket, log)
    except RuntimeError:
        if not data_root.exists():
            raise
    shutil.rmtree(data_root)
    return _start_once(command, socket, log)
