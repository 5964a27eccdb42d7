"""Serve the machine's local torch CPU wheel and the project's pip constraints to image builds over HTTP.

From PyPI, `torch` resolves to a multi-GB CUDA build; test images take the CPU wheel that lies in pip's
find-links folder instead. Builds reach this server on 127.0.0.1 through `--network=host`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The URL is a build argument, part of every later build step's cache key: keep it the same between runs.
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
def serving(files: list[Path], root: Path) -> Iterator[str]:
    """Link `files` into `root` and serve it on 127.0.0.1; yields the base URL (ending in '/')."""
    root.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = root / file.name
        if not target.exists():
            if file.suffix == ".whl":
                target.symlink_to(file)
            else:
                shutil.copyfile(file, target)
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", PORT), handler)
    except OSError:  # taken: any port works, but the changed URL misses the image build cache
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
