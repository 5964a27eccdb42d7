"""Megatron-DeepSpeed checkpoints: ``mp_rank_{tp}_model_states.pt`` per tensor-parallel rank, whose ``module`` is
that rank's Megatron-core state dict. The ranks are merged lazily by the NeMo 1 reader's logic
(``megatron_shards.ShardedSource``: column/row splits, gated fc1 halves); ``deepspeed_convert`` reads the
hyper-parameters from ``--model_config`` (Megatron YAML/JSON, as ``ckpt-convert nemo --model_config``) and applies
the Megatron mapping table.
"""

from __future__ import annotations

import functools

from ckptfmt import CheckpointError

from .deepspeed_layout import Spec
from .deepspeed_pickle import DeepSpeedPickle, tensor_at
from .megatron_names import normalize_name
from .megatron_shards import ShardedSource
from .nemo import EMBEDDING
from .sources import LazyTensor


class MegatronDeepSpeedSource(ShardedSource):
    """The tensor-parallel ranks' ``module`` state dicts as one source of full Megatron tensors."""

    def __init__(self, spec: Spec, gated_mlp: bool):
        self.tp, self.gated = len(spec.model_files), gated_mlp
        self.file = self.location = spec.model_files[0]
        self._pickles = {}
        self._parts: dict[str, list] = {}
        try:
            modules = []
            for tp, path in enumerate(spec.model_files):
                self._pickles[(tp, 0)] = pickle = DeepSpeedPickle(path)
                check_world(pickle, len(spec.model_files))
                modules.append(module_tensors(pickle))
            for name in modules[0]:
                missing = next((spec.model_files[r] for r, m in enumerate(modules) if name not in m), None)
                if missing is not None:
                    raise CheckpointError(f"{missing}: tensor {name} missing (present in {self.file.name})")
                self._parts[name] = [m[name] for m in modules]
        except BaseException:
            self.close()
            raise
        self._fingerprints = {p.region.path: p.fingerprint for p in self._pickles.values()}
        self.tensors = {
            n: LazyTensor(n, self._merged_shape(n, p), self.file, functools.partial(self._merge, n))
            for n, p in self._parts.items()
        }


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
    module = states.get("module")
    if not isinstance(module, dict):
        raise CheckpointError(f"{states.label}: field module is a {type(module).__name__}, not a state dict")
    out = {}
    for key, value in module.items():
        if (name := normalize_name(str(key))) is not None:
            out[name] = tensor_at(value, states.label, f"module.{key}")
    return out


def is_megatron(spec: Spec) -> bool:
    """Megatron names in the first model-states file (Megatron-DeepSpeed at tensor parallel 1 included)."""
    if spec.layout == "megatron":
        return True
    if spec.layout != "module":
        return False
    pickle = DeepSpeedPickle(spec.model_files[0])
    try:
        module = pickle.get("module")
        return isinstance(module, dict) and any(normalize_name(str(k)) == EMBEDDING for k in module)
    finally:
        pickle.close()


def open_megatron(spec: Spec, gated_mlp: bool) -> MegatronDeepSpeedSource:
    return MegatronDeepSpeedSource(spec, gated_mlp)
