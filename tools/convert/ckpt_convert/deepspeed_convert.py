"""``ckpt-convert deepspeed``: DeepSpeed checkpoints (ZeRO 0-3, universal, pipeline) -> checkpoint, no deepspeed.

DeepSpeed stores no architecture: ``--model_config`` (an HF ``config.json`` or its folder) gives it, and the
DeepSpeed tensors, which carry the HF module's names, go through the same HF mapping tables as ``ckpt-convert hf``.
The layouts and how each tensor is rebuilt are in ``deepspeed_source``; the pickles are read with
``deepspeed_pickle`` (restricted, lazy). Tokenizer files next to the model config are carried into the output.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ckptfmt import CheckpointConfig, CheckpointError

from . import options
from .deepspeed_layout import Spec, check_files_inside, locate, tag_directory
from .deepspeed_megatron import check_args, checkpoint_args, is_megatron, open_megatron
from .deepspeed_source import open_deepspeed
from .hf import model_config, tokenizer_files
from .megatron_config import MegatronModel, check_positions, checkpoint_config, read_model
from .megatron_names import split_layer_name
from .megatron_table import MEGATRON_GPT
from .nemo import EMBEDDING, OUTPUT_LAYER, POSITION_TABLE
from .nemo_archive import read_hparams
from .rules import Table
from .sources import AnyTensorSource
from .stream import convert_checkpoint

DESCRIPTION = "DeepSpeed checkpoint directory (ZeRO 0-3, universal, pipeline, Megatron-DeepSpeed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint_dir", required=True, help="folder given to engine.save_checkpoint")
    parser.add_argument("--tag", help="tag folder (global_stepN); default: the one the 'latest' file names")
    parser.add_argument(
        "--model_config",
        required=True,
        type=Path,
        help="the trained model's HF config.json, or its folder (tokenizer files there are carried along); "
        "for Megatron-DeepSpeed checkpoints the Megatron hyper-parameters (YAML/JSON)",
    )
    parser.add_argument(
        "--from_fp32_master",
        action="store_true",
        help="ZeRO 0-2: rebuild the fp32 master weights from the optimizer files instead of reading 'module' "
        "(ZeRO 3 and universal checkpoints always read the fp32 masters)",
    )
    options.add_arguments(parser)


def config_folder(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.name == "config.json" and path.is_file():
        return path.parent
    raise CheckpointError(f"--model_config {path}: not an HF config.json or a folder holding one")


@dataclass(frozen=True)
class Plan:
    """What ``run`` converts: a picklable source opener, its mapping table, the target config and extras."""

    opener: Callable[[], AnyTensorSource]
    table: Table
    config: CheckpointConfig
    config_inputs: list[Path]  # files or folders read besides the checkpoint (never overwritten)
    extra_files: dict[str, Path] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    checkpoint_dir = Path(args.checkpoint_dir)
    spec = locate(tag_directory(checkpoint_dir, args.tag), args.from_fp32_master)
    check_files_inside(spec, checkpoint_dir)
    plan = megatron_plan(spec, args) if is_megatron(spec) else hf_named_plan(spec, args)
    summary = convert_checkpoint(
        plan.opener,
        plan.table,
        plan.config,
        args.output_dir,
        overwrite=args.overwrite,
        workers=args.workers,
        quiet=args.quiet,
        label=str(spec.tag_dir),
        inputs=[checkpoint_dir, *plan.config_inputs],
        extra_files=plan.extra_files,
    )
    if not args.quiet:
        print(summary.line(args.output_dir))
    return 0


def target_config(config: CheckpointConfig, args: argparse.Namespace, dtypes: set[str], tied: bool) -> CheckpointConfig:
    """``config`` with the shared flags applied (warnings printed); ``auto`` dtype: the one dtype read."""
    config, warnings = options.apply_arguments(config, args, next(iter(dtypes)) if len(dtypes) == 1 else None, tied)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return config


def hf_named_plan(spec: Spec, args: argparse.Namespace) -> Plan:
    """Tensors with the HF module's names: the architecture and mapping of ``--model_config``'s HF config."""
    hf_dir = config_folder(args.model_config)
    target, hf, arch = model_config(hf_dir)
    with open_deepspeed(spec) as source:
        dtypes = source.dtypes
    config = target_config(target, args, dtypes, arch.tied(hf))
    opener = functools.partial(open_deepspeed, spec)
    return Plan(opener, arch.table, config, [hf_dir], tokenizer_files(hf_dir))


def megatron_plan(spec: Spec, args: argparse.Namespace) -> Plan:
    """Megatron-DeepSpeed: ``--model_config`` read as Megatron hyper-parameters (YAML or JSON), checked against the
    ``args`` namespace the checkpoint carries."""
    label = str(args.model_config)
    model = read_model(read_hparams(args.model_config), label)
    saved, where = checkpoint_args(spec)
    check_args(saved, where, model, spec.tp, label)
    if spec.layout == "module":
        spec = Spec(spec.tag_dir, "megatron", spec.model_files)
    with open_megatron(spec, model.gated) as source:
        if EMBEDDING not in source:
            raise CheckpointError(f"{spec.model_files[0]}: no tensor {EMBEDDING} (not a Megatron GPT checkpoint?)")
        check_layers(source, model, spec)
        vocab, dtypes = source.get(EMBEDDING).shape[0], source.dtypes
        tied = OUTPUT_LAYER not in source
        check_positions(model, POSITION_TABLE in source, label)
    config = target_config(checkpoint_config(model, vocab, label), args, dtypes, tied)
    return Plan(functools.partial(open_megatron, spec, model.gated), MEGATRON_GPT, config, [args.model_config])


def check_layers(source: AnyTensorSource, model: MegatronModel, spec: Spec) -> None:
    """As many transformer layers as the config says (a pipeline layer file gone shifts the numbering)."""
    found = {split_layer_name(n)[0] for n in source.names()} - {None}
    if found != set(range(model.num_layers)):
        raise CheckpointError(
            f"{spec.tag_dir}: {len(found)} transformer layers found, --model_config says num_layers "
            f"{model.num_layers} (a missing {'pipeline layer file' if spec.layout == 'pipeline' else 'layer'}?)"
        )
