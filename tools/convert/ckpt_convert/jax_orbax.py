"""Orbax pytree checkpoints read leaf by leaf with tensorstore (no jax, no orbax at run time).

``_METADATA`` (JSON) lists the tree: per leaf its key path (``key_metadata``); orbax stores the leaf's array under
the keys joined by ``.``: in the OCDBT database of the folder (``use_ocdbt``: ``manifest.ocdbt``,
``ocdbt.process_*/``), or, in the older per-array layout, as a zarr folder of that name. ``use_zarr3`` picks the
zarr driver. A leaf is opened (its zarr metadata: shape and dtype) up front and read, whole or one index of its
first axis, when the converter asks: memory holds that array (and, while it is decompressed, its stored chunk).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckptfmt import DTYPES, CheckpointError

from .jax_layout import METADATA

MAX_METADATA = 256 << 20


@dataclass(frozen=True)
class OrbaxTree:
    directory: Path
    ocdbt: bool
    zarr3: bool
    leaves: dict[tuple[str, ...], str]  # key path -> stored name


def read_metadata(directory: Path) -> OrbaxTree:
    """The leaves ``directory/_METADATA`` lists; a file that is not orbax's JSON is one error line."""
    path = directory / METADATA
    bad = f"{path}: corrupted orbax metadata"
    try:
        if path.stat().st_size > MAX_METADATA:
            raise CheckpointError(f"{bad} (larger than {MAX_METADATA >> 20} MB)")
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{bad} ({type(err).__name__}: {str(err)[:120]})") from None
    tree = data.get("tree_metadata") if isinstance(data, dict) else None
    if not isinstance(tree, dict) or not tree:
        raise CheckpointError(f"{bad} (no tree_metadata)")
    leaves = {}
    for label, entry in tree.items():
        keys = _keys(entry)
        if keys is None:
            raise CheckpointError(f"{bad} (leaf {label!s:.80}: no key_metadata list of keys)")
        if isinstance(entry.get("value_metadata"), dict) and entry["value_metadata"].get("skip_deserialize"):
            continue
        leaves[keys] = ".".join(keys)
    return OrbaxTree(directory, data.get("use_ocdbt", True) is not False, bool(data.get("use_zarr3", False)), leaves)


def _keys(entry: Any) -> tuple[str, ...] | None:
    keys = entry.get("key_metadata") if isinstance(entry, dict) else None
    if not isinstance(keys, list) or not keys:
        return None
    out = [k.get("key") if isinstance(k, dict) else None for k in keys]
    return tuple(str(k) for k in out) if all(isinstance(k, str | int) for k in out) else None


class OrbaxArrays:
    """Open tensorstore handles of a tree's leaves: shape and dtype now, data on ``read``."""

    def __init__(self, tree: OrbaxTree):
        try:
            import tensorstore as ts
        except ImportError:
            raise CheckpointError(
                "reading orbax checkpoints needs tensorstore: pip install 'ckpt-convert[jax]'"
            ) from None
        self.tree = tree
        self._context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        self._open = ts.open
        self._handles: dict[tuple[str, ...], Any] = {}

    def _spec(self, name: str) -> dict:
        base = str(self.tree.directory.resolve())
        if self.tree.ocdbt:
            kvstore = {"driver": "ocdbt", "base": {"driver": "file", "path": base + "/"}, "path": name + "/"}
        else:
            kvstore = {"driver": "file", "path": f"{base}/{name}/"}
        return {"driver": "zarr3" if self.tree.zarr3 else "zarr", "kvstore": kvstore, "open": True}

    def open(self, keys: tuple[str, ...]) -> tuple[tuple[int, ...], str]:
        """(shape, dtype name) of a leaf, its handle kept for ``read``."""
        name = self.tree.leaves[keys]
        try:
            handle = self._open(self._spec(name), read=True, context=self._context).result()
        except Exception as err:  # tensorstore raises ValueError / RuntimeError with its status text
            raise CheckpointError(f"{self.tree.directory}: leaf {name}: cannot open ({_first_line(err)})") from None
        dtype = str(handle.dtype.numpy_dtype)
        if dtype not in DTYPES:
            raise CheckpointError(f"{self.tree.directory}: leaf {name}: dtype {dtype} (read: {', '.join(DTYPES)})")
        self._handles[keys] = handle
        return tuple(int(d) for d in handle.shape), dtype

    def read(self, keys: tuple[str, ...], index: int | None) -> np.ndarray:
        handle = self._handles[keys]
        try:
            out = (handle if index is None else handle[index]).read().result()
        except Exception as err:
            name = self.tree.leaves[keys]
            raise CheckpointError(f"{self.tree.directory}: leaf {name}: cannot read ({_first_line(err)})") from None
        return np.asarray(out)

    def close(self) -> None:
        self._handles.clear()


def _first_line(err: BaseException) -> str:
    text = str(err).split("[tensorstore_spec", 1)[0].strip()
    return (text.splitlines() or [type(err).__name__])[0][:200]
