"""Megatron-DeepSpeed checkpoints: ``mp_rank_{tp}_model_states.pt`` per tensor-parallel rank, whose ``module`` is
that rank's Megatron-core state dict. The ranks are merged lazily by the NeMo 1 reader's logic
(``megatron_shards.ShardedSource``: column/row splits, gated fc1 halves), the hyper-parameters come from
``--model_config`` (Megatron YAML/JSON, as ``ckpt-convert nemo --model_config``) and the Megatron mapping table
applies.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from ckptfmt import CheckpointError

from . import options
from .deepspeed_pickle import DeepSpeedPickle, tensor_at
from .deepspeed_source import Spec
from .megatron_config import check_positions, checkpoint_config, read_model
from .megatron_names import normalize_name
from .megatron_shards import ShardedSource
from .megatron_table import MEGATRON_GPT
from .nemo import EMBEDDING, OUTPUT_LAYER, POSITION_TABLE
from .nemo_archive import read_hparams
from .sources import LazyTensor
from .stream import Summary, convert_checkpoint


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


def convert_megatron(spec: Spec, args: argparse.Namespace, inputs: list[Path]) -> Summary:
    """Convert with ``--model_config`` read as Megatron hyper-parameters (YAML or JSON)."""
    label = str(args.model_config)
    model = read_model(read_hparams(args.model_config), label)
    spec = Spec(spec.tag_dir, "megatron", spec.model_files)
    with open_megatron(spec, model.gated) as source:
        if EMBEDDING not in source:
            raise CheckpointError(f"{spec.model_files[0]}: no tensor {EMBEDDING} (not a Megatron GPT checkpoint?)")
        vocab, dtypes = source.get(EMBEDDING).shape[0], source.dtypes
        tied = OUTPUT_LAYER not in source
        check_positions(model, POSITION_TABLE in source, label)
    config = checkpoint_config(model, vocab, label)
    config, warnings = options.apply_arguments(config, args, next(iter(dtypes)) if len(dtypes) == 1 else None, tied)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return convert_checkpoint(
        functools.partial(open_megatron, spec, model.gated),
        MEGATRON_GPT,
        config,
        args.output_dir,
        overwrite=args.overwrite,
        workers=args.workers,
        quiet=args.quiet,
        label=str(spec.tag_dir),
        inputs=inputs,
    )
