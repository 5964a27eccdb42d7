"""Small JSON files (config.json, manifest.json) read with bounds: standard library only, so a tool can parse its
configuration before numpy loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MAX_JSON_BYTES = 64 << 20  # config.json, manifest.json: far beyond any real one


def read_json_file(path: Path, missing: str | None = None) -> Any:
    """Parse a small JSON file: a regular file of at most ``MAX_JSON_BYTES``, UTF-8, not nested beyond reason.

    Every failure is one ``CheckpointError`` line naming the file (``missing`` replaces the not-found one).
    """
    try:
        if not path.exists():
            raise CheckpointError(missing or f"{path}: missing")
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, more than any config ({MAX_JSON_BYTES})")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
