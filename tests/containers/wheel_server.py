"""Serve the machine's local torch CPU wheel to image builds as a package index, the way docs/containers.md says.

From PyPI, `torch` resolves to a multi-GB CUDA build, and PyTorch's CPU index cannot be reached from here. The
images take torch from `TORCH_INDEX_URL`; the tests point it at this server, which serves pip's find-links CPU
wheel as `<url>/torch/<wheel>` (a directory listing is a valid simple-index page) on 127.0.0.1, which the builds
reach on the host network (`CKPT_BUILD_NETWORK=host`): a plain-HTTP host they must be told to trust
(`CKPT_PIP_TRUSTED_HOST`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The URL is a build argument, part of the install layers' cache key: keep it the same between runs.
PORT = int(os.environ.get("CKPT_WHEEL_PORT", "38519"))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass


def pip_find_links() -> list[Path]:
    """The local folders in this interpreter's pip `find-links` settings."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    folders = []
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            folders += [Path(item) for item in value.strip("'\"").split() if Path(item).is_dir()]
    return folders


def local_wheels(requirement_prefix: str) -> list[Path]:
    """Wheels named `<requirement_prefix>-*.whl` in pip's find-links folders, e.g. `torch-2.13.0+cpu`."""
    return [wheel for folder in pip_find_links() for wheel in sorted(folder.glob(f"{requirement_prefix}*.whl"))]


@contextlib.contextmanager
def serving_index(wheels: list[Path], root: Path, host: str) -> Iterator[str]:
    """Serve `wheels` as the project pages of a simple index under `root` on `host`; yields the index URL."""
    for wheel in wheels:
        project = root / wheel.name.split("-")[0].lower()
        project.mkdir(parents=True, exist_ok=True)
        if not (project / wheel.name).exists():
            (project / wheel.name).symlink_to(wheel)
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        server = ThreadingHTTPServer((host, PORT), handler)
    except OSError:  # taken: any port works, but the changed URL misses the image build cache
        server = ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
