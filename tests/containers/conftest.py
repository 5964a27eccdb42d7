"""Fixtures for the container tests: dev tools, a private Docker daemon, a local base image, built images."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .base_image import ensure_base_image
from .compose import BUILD_TIMEOUT_S, Compose, documented_block
from .docker_daemon import DockerDaemon, running_daemon
from .wheel_server import local_wheels, serving_index

LOOPBACK = "127.0.0.1"  # the wheel index: never an address off this machine's loopback

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs/containers.md"
TORCH_WHEEL = "torch-2.13.0+cpu-"  # the pin in constraints.txt, CPU build


def dev_tool(name: str) -> str:
    """Path of a command-line dev tool, preferring the running interpreter's venv (`make test` installs them)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH; `make test` installs it")
    return found


def cache_dir() -> Path:
    """Kept between runs on one machine: the base rootfs tarball and the daemon's image store."""
    return Path(os.environ.get("CKPT_SUITE_CACHE", Path.home() / ".cache" / "ckpt-suite"))


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd not installed (Debian package docker.io); the end-to-end container tests need it")
    if shutil.which("docker") is None:
        pytest.fail("dockerd is installed but the docker CLI is not (Debian package docker.io)")
    compose_plugin = Path(dev_tool("docker-compose"))
    with running_daemon(cache_dir() / "docker", tmp_path_factory.mktemp("dockerd"), compose_plugin) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def base_image(docker_daemon: DockerDaemon) -> str:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap not installed (Debian package debootstrap): needed once to make the base image")
    return ensure_base_image(docker_daemon, cache_dir() / "base")


@pytest.fixture(scope="session")
def compose(
    docker_daemon: DockerDaemon, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Compose]:
    """The CPU pipeline with its three images built by docs/containers.md's own commands on the local base.

    torch comes from the documented TORCH_INDEX_URL, here a plain-HTTP index on 127.0.0.1 serving the machine's
    local CPU wheel to builds on the host network (CKPT_BUILD_NETWORK=host); PyTorch's CPU index, the default,
    cannot be reached from here.
    """
    wheels = local_wheels(TORCH_WHEEL)
    if not wheels:
        pytest.fail(f"no local {TORCH_WHEEL}*.whl in pip's find-links folders: test images would pull CUDA torch")
    work = tmp_path_factory.mktemp("compose")
    project = Compose(REPO, work, docker_daemon.env, project="ckpt-suite-test")
    seconds = {}
    with serving_index(wheels[:1], work / "index", host=LOOPBACK) as url:
        project.configure_builds(base_image=base_image, torch_index_url=url, trusted_host=LOOPBACK)
        start = time.monotonic()
        project.warm_install_stages()
        seconds["install stages"] = time.monotonic() - start
        # The documented set-up: the compose plugin linked into a fresh Docker config, COMPOSE_FILE, the build.
        fresh_config = work / "docker-config"
        env = {"DOCKER_CONFIG": str(fresh_config), "COMPOSE_FILE": None}
        start = time.monotonic()
        done = project.shell(documented_block(DOC, "cpu-setup"), env, BUILD_TIMEOUT_S)
        seconds["documented build"] = time.monotonic() - start
        project.check_build(done, "documented-build")
    project.prune()
    _record_figures(docker_daemon, project, seconds)
    yield project
    project.down()


def _record_figures(daemon: DockerDaemon, project: Compose, seconds: dict[str, float]) -> None:
    """Build times and image sizes of this run, kept beside the image store (docs/containers.md quotes them)."""
    sizes = {}
    for service in ("convert-hf", "build", "eval"):
        image = project.image(service)
        sizes[image] = int(daemon.docker("image", "inspect", image, "--format", "{{.Size}}").stdout)
    figures = {"seconds": {k: round(v, 1) for k, v in seconds.items()}, "image_bytes": sizes}
    (cache_dir() / "last-build-figures.json").write_text(json.dumps(figures, indent=1) + "\n")
