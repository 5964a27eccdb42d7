"""Megatron-DeepSpeed checkpoints: one Megatron state dict per tensor-parallel rank, merged into full tensors.

Each rank's tensors come from one of three layouts (``Spec.layout``):

- ``megatron`` / ``module``: ``mp_rank_{tp}_model_states.pt``'s ``module``, flat (megatron-core names) or nested as
  Megatron-DeepSpeed's ``state_dict_for_save_checkpoint`` writes it (``language_model`` -> ``embedding`` ->
  ``word_embeddings`` -> ``weight``; flattened with dots, these are the legacy Megatron-LM names);
- ``zero3``: the rank's ZeRO-3 partitions (``zero_pp_rank_{dp}_mp_rank_{tp}_*``), rebuilt by ``deepspeed_source``;
- ``pipeline``: the rank's ``layer_XX-model_{tp}-model_states.pt`` files (``deepspeed_megatron_pipe``).

Names are normalized (``megatron_names``: legacy and core spellings onto one) and the ranks merged lazily by the
NeMo 1 reader's rules (``megatron_shards.ShardedSource``: column/row splits, gated fc1 halves). ``deepspeed_convert``
reads the hyper-parameters from ``--model_config``, checks them against the ``args`` namespace the checkpoint
carries (``check_args``) and applies the Megatron mapping table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptfmt import CheckpointError

from .deepspeed_layout import Spec
from .deepspeed_megatron_pipe import MEGATRON_LOCAL, pipeline_parts
from .deepspeed_pickle import DeepSpeedPickle, flat_module, megatron_args, tensor_at
from .deepspeed_source import DeepSpeedSource
from .megatron_config import MegatronModel
from .megatron_names import normalize_name
from .megatron_shards import ShardedSource
from .nemo import EMBEDDING
from .sources import LazyTensor

# args namespace field -> MegatronModel attribute it must equal
ARGS_FIELDS = (
    ("num_layers", "num_layers"),
    ("hidden_size", "hidden_size"),
    ("num_attention_heads", "num_heads"),
    ("ffn_hidden_size", "ffn_hidden_size"),
    ("num_key_value_heads", "num_query_groups"),
    ("num_query_groups", "num_query_groups"),
    ("swiglu", "gated"),
)


@dataclass(frozen=True)
class Part:
    """One rank's piece of a tensor: shape and dtype known, ``read`` fetches it."""

    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], np.ndarray]


class MegatronDeepSpeedSource(ShardedSource):
    """The tensor-parallel ranks' Megatron state dicts as one source of full (normalized) Megatron tensors."""

    def __init__(self, spec: Spec, gated_mlp: bool):
        self.tp, self.gated = spec.tp, gated_mlp
        self.file = self.location = spec.model_files[0]
        self._pickles = {}
        self._sources: list[DeepSpeedSource] = []
        self._parts: dict[str, list] = {}
        try:
            ranks = [self._rank_parts(spec, t) for t in range(spec.tp)]
            for name in ranks[0]:
                missing = next((r for r, m in enumerate(ranks) if name not in m), None)
                if missing is not None:
                    raise CheckpointError(
                        f"{spec.of_rank(spec.model_files, missing)[0]}: tensor {name} missing in tensor-parallel "
                        f"rank {missing} (present in rank 0)"
                    )
                self._parts[name] = [m[name] for m in ranks]
        except BaseException:
            self.close()
            raise
        self._fingerprints = {p.region.path: p.fingerprint for p in self._pickles.values()}
        for source in self._sources:
            self._fingerprints.update(source.fingerprints())
        self.tensors = {
            n: LazyTensor(n, self._merged_shape(n, p), self.file, functools.partial(self._merge, n))
            for n, p in self._parts.items()
        }

    def _rank_parts(self, spec: Spec, rank: int) -> dict[str, Any]:
        files = spec.of_rank(spec.model_files, rank)
        if spec.layout == "zero3":
            source = DeepSpeedSource(Spec(spec.tag_dir, "zero3", files, spec.of_rank(spec.optim_files, rank)))
            self._sources.append(source)
            dtype = next(iter(source.dtypes), "float32")
            return _normalized({n: Part(t.shape, dtype, t.load) for n, t in source.tensors.items()})
        if spec.layout == "pipeline":
            pickles: list[DeepSpeedPickle] = []
            for path in files:
                self._pickles[(rank, len(pickles))] = pickle = DeepSpeedPickle(path)
                pickles.append(pickle)
            return _normalized(pipeline_parts(pickles))
        (path,) = files
        self._pickles[(rank, 0)] = states = DeepSpeedPickle(path)
        check_world(states, spec.tp)
        return module_tensors(states)

    def close(self) -> None:
        super().close()
        for source in getattr(self, "_sources", []):
            source.close()


def _normalized(tensors: dict[str, Any]) -> dict[str, Any]:
    return {name: t for key, t in tensors.items() if (name := normalize_name(key)) is not None}


def check_world(states: DeepSpeedPickle, files: int) -> None:
    """``mp_world_size`` (the tensor-parallel size it was saved at) names a missing rank file."""
    world = states.top("mp_world_size")
    if isinstance(world, int) and world > files:
        missing = states.region.path.with_name(f"mp_rank_{files:02d}_model_states.pt")
        raise CheckpointError(f"{missing}: missing (tensor-parallel rank {files} of {world}: mp_world_size)")
    if isinstance(world, int) and world != files:
        raise CheckpointError(
            f"{states.label}: world size mismatch: mp_world_size {world}, {files} mp_rank_*_model_states.pt files"
        )


def module_tensors(states: DeepSpeedPickle) -> dict:
    """``module``'s tensors under their normalized Megatron names (entries without weights dropped)."""
    out = {}
    for key, value in flat_module(states).items():
        if (name := normalize_name(key)) is not None:
            out[name] = tensor_at(value, states.label, f"module.{key}")
    return out


def is_megatron(spec: Spec) -> bool:
    """Megatron names in the first model-states file, ZeRO-3 parameter list or pipeline layer files (at any tp)."""
    if spec.layout == "megatron":
        return True
    if spec.layout not in ("module", "zero3", "pipeline"):
        return False
    if spec.layout == "pipeline":
        return _pipeline_is_megatron(spec)
    pickle = DeepSpeedPickle(spec.model_files[0])
    try:
        if spec.layout == "zero3":
            groups = pickle.top("param_shapes")
            names = (
                [n for g in groups for n in g]
                if isinstance(groups, list) and all(isinstance(g, dict) for g in groups)
                else []
            )
        else:
            names = list(flat_module(pickle)) if isinstance(pickle.top("module"), dict) else []
        return any(normalize_name(str(k)) == EMBEDDING for k in names)
    finally:
        pickle.close()


def _pipeline_is_megatron(spec: Spec) -> bool:
    for path in spec.of_rank(spec.model_files, 0):
        pickle = DeepSpeedPickle(path)
        try:
            root = pickle.root
            if isinstance(root, dict) and any(str(k) in MEGATRON_LOCAL for k in root):
                return True
        finally:
            pickle.close()
    return False


def checkpoint_args(spec: Spec) -> tuple[dict | None, str]:
    """Megatron-DeepSpeed's ``args`` namespace (as a dict) and the file holding it; (None, '') if absent."""
    path = spec.model_files[0] if spec.layout != "pipeline" else spec.tag_dir / "mp_rank_00_model_states.pt"
    if not path.is_file():
        return None, ""
    pickle = DeepSpeedPickle(path)
    try:
        return megatron_args(pickle), str(path)
    finally:
        pickle.close()


def check_args(args: dict | None, where: str, model: MegatronModel, tp: int, config_label: str) -> None:
    """The checkpoint's own hyper-parameters agree with ``--model_config`` and with the rank files found."""
    if args is None:
        return
    for key, attr in ARGS_FIELDS:
        value, want = args.get(key), getattr(model, attr)
        if value is not None and isinstance(value, (int, bool)) and type(value) is type(want) and value != want:
            raise CheckpointError(f"{where}: args.{key} is {value}, but {config_label} gives {want}")
    saved_tp = args.get("tensor_model_parallel_size")
    if isinstance(saved_tp, int) and saved_tp != tp:
        raise CheckpointError(
            f"{where}: args.tensor_model_parallel_size is {saved_tp}, but {tp} tensor-parallel rank files were found"
        )


def open_megatron(spec: Spec, gated_mlp: bool) -> MegatronDeepSpeedSource:
    return MegatronDeepSpeedSource(spec, gated_mlp)
