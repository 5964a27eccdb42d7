"""A JAX tree (orbax or flax msgpack) as a lazy source of HuggingFace-named tensors, through a ``jax_tables`` table.

Every leaf is matched to the table up front (an unknown parameter is refused), its HF shape computed from the stored
shape, and nothing is read until the converter asks for a tensor: then that leaf (or the one slice of its first
axis the tensor needs: ``kv_einsum[1]`` is v) is read and reshaped. A leaf far larger than any tensor of the
configured model is refused before it is read.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError

from .jax_layout import Location
from .jax_msgpack import StoredArray, read_array, scan
from .jax_orbax import OrbaxArrays, read_metadata
from .jax_tables import TABLES, Dims, JaxTable, Leaf
from .lazy_source import LazyTensorSource
from .source_guard import GuardedFile
from .sources import LazyTensor

Keys = tuple[str, ...]
Described = tuple[tuple[int, ...], str]  # shape, dtype name


@dataclass(frozen=True)
class Expect:
    """What the configured model allows: its sizes (``Dims``), layers, largest tensor."""

    dims: Dims
    layers: int
    max_elements: int


def tree_paths(keys: list[Keys], prefixes: tuple[str, ...]) -> dict[str, Keys]:
    """Normalized path (``a/b/c``) -> stored key path. Keys are split on ``/`` (the flat Gemma form); a tree with a
    top-level ``params`` keeps only that subtree (a TrainState's step and optimizer state are skipped), and
    ``params`` wrappers and the table's optional ``prefixes`` are dropped from the front."""
    split = {k: [p for part in k for p in str(part).split("/")] for k in keys}
    if any(parts[0] == "params" for parts in split.values()):
        split = {k: parts for k, parts in split.items() if parts[0] == "params"}
    out: dict[str, Keys] = {}
    for k, parts in split.items():
        while len(parts) > 1 and parts[0] == "params":
            parts = parts[1:]
        if len(parts) > 1 and parts[0] in prefixes:
            parts = parts[1:]
        out["/".join(parts)] = k
    return out


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)"))


class JaxSource(LazyTensorSource):
    """HF name -> lazy tensor over one orbax pytree folder or one flax msgpack file."""

    def __init__(self, location: Location, table: JaxTable, expect: Expect):
        self.location, self.tensors = location.path, {}
        self.dtypes: set[str] = set()
        self.notices: list[str] = []  # what the reading changed, for the user
        self._expect = expect
        self._orbax: OrbaxArrays | None = None
        self._file: GuardedFile | None = None
        self._arrays: dict[Keys, StoredArray] = {}
        try:
            keys, describe = self._open_store(location)
            self._map(table, keys, describe)
        except BaseException:
            self.close()
            raise

    def _open_store(self, location: Location) -> tuple[list[Keys], Callable[[Keys], Described]]:
        """The leaves of the store, and how to get one's (shape, dtype) (orbax: opens it)."""
        if location.kind == "msgpack":
            self._file = GuardedFile(location.path)
            self._fingerprints = {location.path: self._file.fingerprint}
            self._arrays = scan(self._file, str(location.path))
            return list(self._arrays), lambda k: (self._arrays[k].shape, self._arrays[k].dtype)
        tree = read_metadata(location.path)
        self._fingerprint(sorted(p for p in location.path.rglob("*") if p.is_file()))
        self._orbax = OrbaxArrays(tree)
        return list(tree.leaves), self._orbax.open

    def _label(self, keys: Keys) -> str:
        return f"{self.location}: {'/'.join(str(k) for k in keys)}"

    def _map(self, table: JaxTable, keys_list: list[Keys], describe: Callable[[Keys], Described]) -> None:
        """Names first (an unknown parameter is refused before any leaf is opened), then shapes."""
        patterns = [(leaf, _pattern(t)) for leaf in table.leaves for t in leaf.jax]
        matched = []
        for path, keys in sorted(tree_paths(keys_list, table.prefixes).items()):
            hits = [(leaf, m) for leaf, p in patterns if (m := p.fullmatch(path))]
            if not hits:
                raise CheckpointError(
                    f"{self._label(keys)}: unknown parameter {path} (not in the table of the {table.name}; "
                    "a different model or layout?)"
                )
            matched.append((keys, hits))
        for keys, hits in matched:
            shape, dtype = describe(keys)
            self._check_size(keys, shape)
            for leaf, m in hits:
                self._add(leaf, m, keys, shape, dtype)
            indices = {leaf.index for leaf, _ in hits}
            if indices != {None} and indices != set(range(shape[0] if shape else 0)):
                raise CheckpointError(f"{self._label(keys)}: first axis {list(shape)[:1]} is not {len(indices)} parts")

    def _check_size(self, keys: Keys, shape: tuple[int, ...]) -> None:
        if math.prod(shape) > 3 * self._expect.max_elements:
            raise CheckpointError(
                f"{self._label(keys)}: shape {list(shape)} does not match the model config (larger than any tensor "
                "of the model)"
            )

    def _add(self, leaf: Leaf, match: re.Match[str], keys: Keys, shape: tuple[int, ...], dtype: str) -> None:
        layer = int(match.group(1)) if match.groups() else None
        if layer is not None and layer >= self._expect.layers:
            raise CheckpointError(
                f"{self._label(keys)}: layer {layer}, but the model config has {self._expect.layers} layers"
            )
        part = shape if leaf.index is None else shape[1:]
        hf_shape = leaf.reshape.shape(part, self._expect.dims) if part else None
        if leaf.index is not None and (not shape or leaf.index >= shape[0]):
            hf_shape = None
        if hf_shape is None:
            raise CheckpointError(
                f"{self._label(keys)}: shape {list(shape)} does not match the model config ({leaf.reshape.name}"
                f"{'' if leaf.index is None else f' of part {leaf.index}'}, hidden size {self._expect.dims.hidden})"
            )
        name = leaf.hf.format(i=layer)
        if leaf.reshape.drops and hf_shape != part:
            self.notices.append(
                f"{self._label(keys)}: {list(part)} stored, {name} {list(hf_shape)} written ({leaf.reshape.name}: "
                "the rows past the config's vocab_size are padding no token id reaches)"
            )
        if name in self.tensors:
            raise CheckpointError(f"{self._label(keys)}: a second source of {name} (two layouts in one tree?)")
        load = functools.partial(self._read, keys, leaf)
        self.tensors[name] = LazyTensor(name, hf_shape, Path(self._label(keys)), load)
        self.dtypes.add(dtype)

    def _read(self, keys: Keys, leaf: Leaf) -> np.ndarray:
        if self._orbax is not None:
            raw = self._orbax.read(keys, leaf.index)
        else:
            assert self._file is not None  # msgpack store
            raw = read_array(self._file, self._arrays[keys], f"leaf {'/'.join(keys)}", leaf.index)
        return leaf.reshape.apply(raw, self._expect.dims)

    def close(self) -> None:
        super().close()
        if self._orbax is not None:
            self._orbax.close()
        if self._file is not None:
            self._file.close()


def open_jax(location: Location, model_type: str, expect: Expect) -> JaxSource:
    """The source for an HF ``model_type``'s layout table (a name, so that the opener pickles for workers)."""
    return JaxSource(location, TABLES[model_type], expect)
