"""DeepSpeed checkpoint folders as lazy tensor sources, read without deepspeed.

One tag folder (``global_stepN/``) holds, by layout (``deepspeed_layout.locate``):

- ZeRO 0-2: ``mp_rank_00_model_states.pt`` whose ``module`` is the full state dict (HF names for HF models);
  ZeRO 1/2 add ``[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt``: rank ``r``'s slice of each parameter
  group's flat fp32 master (``single_partition_of_fp32_groups``). The ranks' slices of a group, end to end, are
  the group's parameters (``param_shapes``, in order) followed by alignment padding. ZeRO 0 with a bf16/fp16
  optimizer keeps the fp32 masters per parameter in ``optimizer.fp32_groups``.
- ZeRO 3: ``zero_pp_rank_{r}_mp_rank_00_model_states.pt`` (``module`` holds empty placeholders) and the optimizer
  files, whose ``fp32_flat_groups`` hold, per rank, ``ceil(numel / world)`` elements of every parameter in order
  (the last rank's share padded).
- universal (``ds_to_universal``): ``zero/<param name>/fp32.pt`` per parameter.
- pipeline (``PipelineModule``): ``layer_XX-model_states.pt`` per layer with the layer module's local names.

Nothing is loaded up front: each tensor is assembled when the converter asks for it from the byte ranges it
spans, read with ``preadv`` (``torch_pickle.StoredTensor.narrow``), so memory holds one tensor, not a partition.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ckptfmt import CheckpointError

from .deepspeed_layout import PIPE_LAYER, Spec, rank_file
from .deepspeed_pickle import DeepSpeedPickle, flat_module, tensor_at
from .lazy_source import LazyTensorSource
from .source_guard import Fingerprint, fingerprint
from .sources import LazyTensor
from .torch_pickle import NUMPY_DTYPES, StoredTensor


class FlatPieces:
    """Several 1-D tensors read as one, end to end; ``read(start, n)`` reads only the pieces' bytes it spans."""

    def __init__(self, pieces: Sequence[StoredTensor]):
        self.pieces = list(pieces)
        self.starts = [0]
        for p in self.pieces:
            self.starts.append(self.starts[-1] + p.shape[0])
        self.numel = self.starts[-1]

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements ``start .. start + n`` (into ``out`` when given: no second copy of a large tensor)."""
        spans = []
        for piece, lo in zip(self.pieces, self.starts):
            a, b = max(start, lo), min(start + n, lo + piece.shape[0])
            if a < b:
                spans.append((piece.narrow((a - lo,), (b - a,)), a - start))
        if out is None and len(spans) == 1:
            return spans[0][0].read()
        if out is None:
            out = np.empty(n, NUMPY_DTYPES[spans[0][0].dtype])
        for part, at in spans:
            out[at : at + part.shape[0]] = part.read()
        return out


class DeepSpeedSource(LazyTensorSource):
    """Name -> lazy tensor over one DeepSpeed tag folder (``Spec``); HF-named for HF models."""

    def __init__(self, spec: Spec):
        self.spec, self.location = spec, spec.tag_dir
        self.tensors = {}
        self._pickles: list[DeepSpeedPickle] = []
        self.dtypes: set[str] = set()
        try:
            getattr(self, f"_open_{spec.layout}")()
        except BaseException:
            self.close()
            raise
        self._fingerprints = {p.region.path: p.fingerprint for p in self._pickles}
        if spec.layout == "universal":
            self._fingerprints.update(self._universal_prints)

    def _open(self, path: Path) -> DeepSpeedPickle:
        p = DeepSpeedPickle(path)
        self._pickles.append(p)
        return p

    def _add(self, name: str, shape: tuple[int, ...], dtype: str, file: Path, load) -> None:
        self.tensors[name] = LazyTensor(name, shape, file, load)
        self.dtypes.add(dtype)

    def _add_stored(self, name: str, t: StoredTensor, file: Path) -> None:
        self._add(name, t.shape, t.dtype, file, t.read)

    # --- ZeRO 0-2: the module's own weights
    def _module(self, states: DeepSpeedPickle) -> dict[str, StoredTensor]:
        return _tensor_dict(flat_module(states), states.label, "module.")

    def _open_module(self) -> None:
        states = self._open(self.spec.model_files[0])
        for name, t in self._module(states).items():
            self._add_stored(name, t, states.region.path)

    # --- ZeRO 1/2 with --from_fp32_master: groups split evenly across ranks, parameters end to end
    def _open_zero12(self) -> None:
        states = self._open(self.spec.model_files[0])
        groups = _param_shapes(states)
        optims = [self._open(p) for p in self.spec.optim_files]
        _check_world(states, optims, self.spec.optim_files)
        for g, shapes in enumerate(groups):
            parts = [
                tensor_at(_field(o, "single_partition_of_fp32_groups", g), o.label, f"fp32 partition of group {g}")
                for o in optims
            ]
            if any(len(p.shape) != 1 for p in parts):
                raise CheckpointError(f"{optims[0].label}: group {g}: fp32 partitions are not flat")
            flat = FlatPieces(parts)
            offset = 0
            for name, shape in shapes.items():
                n = math.prod(shape)
                self._add(name, shape, parts[0].dtype, optims[0].region.path, _slice_loader(flat, offset, shape))
                offset += n
            _check_fill(optims[0].label, g, offset, flat.numel, len(optims))
        self._add_rest(states)

    def _add_rest(self, states: DeepSpeedPickle) -> None:
        """Buffers and frozen parameters from ``module``, and tied parameters under their second name."""
        module = self._module(states)
        extra = list(states.top("buffer_names") or []) + list(states.top("frozen_param_shapes") or {})
        for name in extra:
            if name in module and name not in self.tensors:
                self._add_stored(name, module[name], states.region.path)
        self._add_shared(states)

    def _add_shared(self, states: DeepSpeedPickle) -> None:
        shared = states.top("shared_params") or {}
        for name, source in shared.items():
            if source in self.tensors and name not in self.tensors:
                self.tensors[name] = self.tensors[source]

    # --- ZeRO 0 with a bf16/fp16 optimizer and --from_fp32_master: fp32 copies per parameter
    def _open_fp32_groups(self) -> None:
        states = self._open(self.spec.model_files[0])
        module = self._module(states)
        optimizer = states.top("optimizer")
        groups = optimizer.get("fp32_groups") if isinstance(optimizer, dict) else None
        if isinstance(optimizer, dict) and "fp32_groups_flat" in optimizer:
            raise CheckpointError(
                f"{states.label}: fp16 ZeRO 0 masters (optimizer.fp32_groups_flat): not supported yet; "
                "drop --from_fp32_master to read the module weights"
            )
        if groups is None:  # an fp32 run: the module is the master
            self._open_module()
            return
        masters = [tensor_at(t, states.label, "optimizer.fp32_groups") for g in groups for t in g]
        buffers = set(states.top("buffer_names") or [])
        params, seen = [], set()
        for name, t in module.items():  # model.parameters() order: a tied parameter once
            where = (t.position, t.offset)
            if name not in buffers and where not in seen:
                seen.add(where)
                params.append(name)
        if len(params) != len(masters):
            raise CheckpointError(
                f"{states.label}: {len(masters)} fp32 master tensors in optimizer.fp32_groups for {len(params)} "
                "module parameters"
            )
        for name, master in zip(params, masters):
            if master.shape != module[name].shape:
                raise CheckpointError(
                    f"{states.label}: fp32 master of {name} has shape {list(master.shape)}, "
                    f"the module's {list(module[name].shape)}"
                )
            self._add_stored(name, master, states.region.path)
        for name, t in module.items():
            if name not in self.tensors:
                self._add_stored(name, t, states.region.path)

    # --- ZeRO 3: every parameter split across ranks, ceil(numel / world) elements each
    def _open_zero3(self) -> None:
        if self.spec.tp > 1:
            raise CheckpointError(
                f"{self.spec.model_files[0]}: ZeRO-3 with tensor-parallel ranks and no Megatron names: the layout "
                "does not say how the ranks are split"
            )
        models = [self._open(p) for p in self.spec.model_files]
        optims = [self._open(p) for p in self.spec.optim_files]
        _check_world(models[0], optims, self.spec.optim_files)
        shapes: dict[str, tuple[int, ...]] = {}
        for group in _param_shapes(models[0]):
            shapes.update(group)
        world = len(optims)
        flats = []
        for o in optims:
            groups = _field(o, "fp32_flat_groups")
            if not isinstance(groups, list):
                raise CheckpointError(f"{o.label}: field fp32_flat_groups is not a list")
            flats.append(FlatPieces([tensor_at(t, o.label, f"fp32_flat_groups[{i}]") for i, t in enumerate(groups)]))
        offset = 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            share = -(-n // world)
            self._add(name, shape, "float32", optims[0].region.path, _zero3_loader(flats, offset, share, shape))
            offset += share
        for rank, flat in enumerate(flats):
            _check_fill(optims[rank].label, "all", offset, flat.numel, world)
        frozen = models[0].top("frozen_param_shapes") or {}
        for name, shape in frozen.items():
            frags = [tensor_at(m.get("frozen_param_fragments", name), m.label, f"frozen {name}") for m in models]
            self._add(name, tuple(shape), frags[0].dtype, models[0].region.path, _frozen_loader(frags, tuple(shape)))
        module = self._module(models[0])
        for name in models[0].top("buffer_names") or []:
            if name in module:
                self._add_stored(name, module[name], models[0].region.path)
        self._add_shared(models[0])

    # --- pipeline: layer_XX-model_states.pt, one PipelineModule layer each, HF modules with local names
    def _open_pipeline(self) -> None:
        """Leading layers of plain tensors (``weight``) are the embedding, trailing ones the final norm (1-D) and
        the head (2-D); the layers between are decoder layers, numbered from 0 in file order."""
        if self.spec.tp > 1:
            raise CheckpointError(
                f"{self.spec.model_files[0]}: tensor-parallel pipeline layers without Megatron names: the layout "
                "does not say how the ranks are split"
            )
        indices = [int(PIPE_LAYER.match(p.name).group("layer")) for p in self.spec.model_files]  # type: ignore[union-attr]
        if missing := sorted(set(range(min(indices), max(indices) + 1)) - set(indices)):
            raise CheckpointError(
                f"{self.spec.tag_dir}/layer_{missing[0]:02d}-model_states.pt: missing (pipeline layer)"
            )
        files = [(path, _tensor_dict(self._open(path).root, str(path), "")) for path in self.spec.model_files]
        plain = [all("." not in name for name in tensors) for _, tensors in files]
        first = plain.index(False) if False in plain else len(plain)
        last = len(plain) - plain[::-1].index(False) if False in plain else first
        for position, (path, tensors) in enumerate(files):
            for name, t in tensors.items():
                if first <= position < last:
                    if plain[position]:
                        raise CheckpointError(f"{path}: plain tensor {name} between the decoder layers")
                    full = f"model.layers.{position - first}.{name}"
                elif position < first:
                    full = f"model.embed_tokens.{name}"
                else:
                    full = f"{'model.norm' if len(t.shape) == 1 else 'lm_head'}.{name}"
                if full in self.tensors:
                    raise CheckpointError(f"{path}: tensor {name}: a second {full} (pipeline layers not understood)")
                self._add_stored(full, t, path)

    # --- universal: zero/<param>/fp32.pt, one small pickle per parameter (opened again when read)
    def _open_universal(self) -> None:
        self._universal_prints: dict[Path, Fingerprint] = {}
        zero = self.spec.tag_dir / "zero"
        for folder in sorted(p for p in zero.iterdir() if p.is_dir()):
            path = folder / "fp32.pt"
            if not path.is_file():
                raise CheckpointError(f"{path}: missing (universal checkpoint parameter {folder.name})")
            before = fingerprint(path)
            p = DeepSpeedPickle(path, before)
            try:
                t = _universal_tensor(p)
            finally:
                p.close()
            self._universal_prints[path] = before
            self._add(folder.name, t.shape, t.dtype, path, functools.partial(_read_universal, path, before))
        if not self.tensors:
            raise CheckpointError(f"{zero}: no parameter folders (not a universal checkpoint?)")

    def close(self) -> None:
        super().close()
        for p in getattr(self, "_pickles", []):
            p.close()


def open_deepspeed(spec: Spec) -> DeepSpeedSource:
    return DeepSpeedSource(spec)


def _tensor_dict(state: Any, label: str, field: str) -> dict[str, StoredTensor]:
    """A state dict of tensors (``field``: its place in the file, for errors)."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{label}: {field.rstrip('.') or 'top level'} is a {type(state).__name__}, not a state dict"
        )
    return {str(k): tensor_at(v, label, f"{field}{k}") for k, v in state.items()}


def _field(optim: DeepSpeedPickle, key: str, index: int | None = None) -> Any:
    value = optim.get("optimizer_state_dict", key)
    return value if index is None else optim.get("optimizer_state_dict", key, index)


def _param_shapes(states: DeepSpeedPickle) -> list[dict[str, tuple[int, ...]]]:
    groups = states.get("param_shapes")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{states.label}: field param_shapes is not a list of name -> shape per group")
    out = []
    for g in groups:
        shapes = {}
        for name, shape in g.items():
            if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise CheckpointError(f"{states.label}: param_shapes: {name}: bad shape {shape!r:.60}")
            shapes[str(name)] = tuple(shape)
        out.append(shapes)
    return out


def _check_world(states: DeepSpeedPickle, optims: list[DeepSpeedPickle], files: Sequence[Path]) -> None:
    """The number of partition files is the world size the checkpoint was written at."""
    count = _field(optims[0], "partition_count")
    counts = set(count) if isinstance(count, list) else {count}
    world = states.top("dp_world_size")
    for expected in counts:
        if isinstance(expected, int) and expected > len(optims):
            raise CheckpointError(
                f"{rank_file(files[0], len(optims))}: missing (partition {len(optims)} of {expected}: "
                f"partition_count in {files[0].name} is {expected})"
            )
        if expected != len(optims):
            raise CheckpointError(
                f"{optims[0].label}: world size mismatch: partition_count says {expected} partitions, "
                f"{len(optims)} optimizer partition files found in {files[0].parent}"
            )
    if isinstance(world, int) and world != len(optims):
        raise CheckpointError(
            f"{states.label}: world size mismatch: dp_world_size {world}, {len(optims)} optimizer partition "
            f"files found in {files[0].parent}"
        )


def _check_fill(label: str, group: int | str, used: int, available: int, world: int) -> None:
    """The parameters fit the partitions, and what is left over is no more than alignment padding."""
    if used > available or available - used > max(4096 * world, available // 100):
        raise CheckpointError(
            f"{label}: group {group}: param_shapes need {used} elements, the partitions hold {available} "
            "(files from different checkpoints?)"
        )


def _slice_loader(flat: FlatPieces, offset: int, shape: tuple[int, ...]):
    return functools.partial(_read_slice, flat, offset, shape)


def _read_slice(flat: FlatPieces, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    return flat.read(offset, math.prod(shape)).reshape(shape)


def _zero3_loader(flats: list[FlatPieces], offset: int, share: int, shape: tuple[int, ...]):
    return functools.partial(_read_zero3, flats, offset, share, shape)


def _read_zero3(flats: list[FlatPieces], offset: int, share: int, shape: tuple[int, ...]) -> np.ndarray:
    """Rank r holds elements ``r * share ..`` of the parameter; the last rank's share ends in padding."""
    dtype = NUMPY_DTYPES[flats[0].pieces[0].dtype]
    out = np.empty(share * len(flats), dtype)
    for rank, flat in enumerate(flats):
        flat.read(offset, share, out[rank * share : (rank + 1) * share])
    return out[: math.prod(shape)].reshape(shape)


def _frozen_loader(frags: list[StoredTensor], shape: tuple[int, ...]):
    return functools.partial(_read_frozen, frags, shape)


def _read_frozen(frags: list[StoredTensor], shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([f.read().reshape(-1) for f in frags])[: math.prod(shape)].reshape(shape)


def _universal_tensor(p: DeepSpeedPickle) -> StoredTensor:
    root = p.root
    value = root.get("param") if isinstance(root, dict) else root
    return tensor_at(value, p.label, "param")


def _read_universal(path: Path, before: Fingerprint) -> np.ndarray:
    p = DeepSpeedPickle(path, before)
    try:
        return _universal_tensor(p).read()
    finally:
        p.close()
