"""A Debian base image made with debootstrap, standing in for the NVIDIA images (no registry here).

The rootfs tarball is cached, so debootstrap (about 100 s) runs once per machine; importing it takes seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .docker_daemon import DockerDaemon

SUITE = "bookworm"
MIRROR = os.environ.get("CKPT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
IMAGE = f"ckpt-suite-testbase:{SUITE}"


def _rootfs_tarball(cache_dir: Path) -> Path:
    """Return the cached rootfs tarball, running debootstrap first if there is none."""
    tarball = cache_dir / f"debian-{SUITE}-minbase.tar.gz"
    if tarball.is_file():
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="debootstrap-") as work:
        rootfs = Path(work) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), MIRROR],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        partial = Path(work) / "rootfs.tar.gz"
        subprocess.run(["tar", "-C", str(rootfs), "-czf", str(partial), "."], check=True)
        partial.replace(tarball)
    return tarball


def ensure_base_image(daemon: DockerDaemon, cache_dir: Path) -> str:
    """Return the tag of the local base image, importing (and if needed bootstrapping) it."""
    if daemon.docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return IMAGE
    tarball = _rootfs_tarball(cache_dir)
    daemon.docker("import", str(tarball), IMAGE)
    return IMAGE
