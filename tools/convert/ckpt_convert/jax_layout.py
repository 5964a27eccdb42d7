"""Where the tree lies in a ``--checkpoint_dir``: an orbax pytree folder, a ``CheckpointManager`` step, a msgpack file.

- orbax pytree (``StandardCheckpointer``, ``PyTreeCheckpointer``): a folder holding ``_METADATA``;
- ``CheckpointManager``: step folders ``N/`` (or ``PREFIX_N/``) each holding item folders (``default/``,
  ``params/``, ...) that are pytree folders; ``--step`` picks one, default the highest. Uncommitted steps
  (``N.orbax-checkpoint-tmp-*``) are not steps;
- flax msgpack: a file (``flax_model.msgpack``, ``*.msgpack``, or flax's ``checkpoint_N`` step files).

Every entry under the chosen folder (or the file itself) must resolve inside ``--checkpoint_dir``: tensorstore
follows links, so a link out of the source is refused before anything is read.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ckptfmt import CheckpointError

from .source_guard import check_inside

METADATA = "_METADATA"
STEP = re.compile(r"^(?:[A-Za-z0-9]+_)?(\d+)$")
ITEM_PREFERENCE = ("params", "default", "state")


@dataclass(frozen=True)
class Location:
    """``path``: the pytree folder (``kind`` orbax) or the msgpack file (``kind`` msgpack)."""

    kind: str
    path: Path
    step: int | None = None


def locate(checkpoint_dir: Path, step: int | None) -> Location:
    """The tree ``--checkpoint_dir`` / ``--step`` name."""
    if not checkpoint_dir.exists():
        raise CheckpointError(f"--checkpoint_dir {checkpoint_dir}: missing")
    if checkpoint_dir.is_file():
        return _single(Location("msgpack", checkpoint_dir), step, checkpoint_dir)
    if (checkpoint_dir / METADATA).exists():
        return _single(Location("orbax", checkpoint_dir), step, checkpoint_dir)
    steps = _steps(checkpoint_dir)
    if steps:
        return _step(checkpoint_dir, steps, step)
    if any((p / METADATA).exists() for p in checkpoint_dir.iterdir()):  # one step folder of a manager
        return _single(_item(checkpoint_dir, None), step, checkpoint_dir)
    packs = sorted(checkpoint_dir.glob("*.msgpack"))
    if len(packs) == 1:
        return _single(Location("msgpack", packs[0]), step, checkpoint_dir)
    found = f"{len(packs)} .msgpack files" if packs else "no _METADATA, step folders or .msgpack file"
    raise CheckpointError(
        f"--checkpoint_dir {checkpoint_dir}: not an orbax or flax checkpoint ({found}; pass the checkpoint folder, "
        "a CheckpointManager directory or the .msgpack file)"
    )


def _single(location: Location, step: int | None, checkpoint_dir: Path) -> Location:
    if step is not None:
        raise CheckpointError(f"--step {step}: {checkpoint_dir} is one checkpoint, not a folder of step folders")
    return location


def _steps(directory: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for child in directory.iterdir():
        m = STEP.match(child.name)
        if m and (child.is_file() or any(child.glob(f"*{METADATA}")) or any(child.glob(f"*/{METADATA}"))):
            out.setdefault(int(m.group(1)), child)
    return out


def _step(directory: Path, steps: dict[int, Path], step: int | None) -> Location:
    chosen = max(steps) if step is None else step
    if chosen not in steps:
        listed = ", ".join(str(s) for s in sorted(steps)[:20])
        raise CheckpointError(f"--step {step}: no such step in {directory} (steps found: {listed})")
    path = steps[chosen]
    if path.is_file():
        return Location("msgpack", path, chosen)
    if (path / METADATA).exists():
        return Location("orbax", path, chosen)
    return _item(path, chosen)


def _item(path: Path, step: int | None) -> Location:
    """The item folder of a step: ``params``, else ``default``, else the only one."""
    items = sorted(p.name for p in path.iterdir() if (p / METADATA).exists())
    pick = [n for n in ITEM_PREFERENCE if n in items] if len(items) > 1 else items
    if not pick:
        raise CheckpointError(
            f"{path}: items {', '.join(items)}; none is 'params' or 'default' (pass the item folder as "
            "--checkpoint_dir)"
        )
    return Location("orbax", path / pick[0], step)


def check_links(location: Location, checkpoint_dir: Path) -> None:
    """No file or folder of the tree is a link out of ``checkpoint_dir``, and every file is a regular file (a named
    pipe would block the read forever)."""
    roots = (checkpoint_dir.resolve(),)
    check_inside(location.path, roots, "the checkpoint")
    if location.kind != "orbax":
        _regular(location.path)
        return
    for folder, dirs, files in os.walk(location.path):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                check_inside(path, roots, "a checkpoint file")
            if name in files:
                _regular(path)


def _regular(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file (a pipe, socket or device is not read)")
