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
from pathlib import Path

from ckptfmt import CheckpointError

from . import options
from .deepspeed_megatron import convert_megatron, is_megatron
from .deepspeed_source import Spec, check_files_inside, locate, open_deepspeed, tag_directory
from .hf import model_config, tokenizer_files
from .stream import Summary, convert_checkpoint

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


def run(args: argparse.Namespace) -> int:
    checkpoint_dir = Path(args.checkpoint_dir)
    spec = locate(tag_directory(checkpoint_dir, args.tag), args.from_fp32_master)
    check_files_inside(spec, checkpoint_dir)
    if is_megatron(spec):
        summary = convert_megatron(spec, args, [checkpoint_dir, args.model_config])
    else:
        summary = convert_hf_named(spec, args, checkpoint_dir)
    if not args.quiet:
        print(summary.line(args.output_dir))
    return 0


def convert_hf_named(spec: Spec, args: argparse.Namespace, checkpoint_dir: Path) -> Summary:
    """Tensors with the HF module's names: the architecture and mapping of ``--model_config``'s HF config."""
    hf_dir = config_folder(args.model_config)
    target, hf, arch = model_config(hf_dir)
    with open_deepspeed(spec) as source:
        dtypes = source.dtypes
    source_dtype = next(iter(dtypes)) if len(dtypes) == 1 else None
    config, warnings = options.apply_arguments(target, args, source_dtype, arch.tied(hf))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return convert_checkpoint(
        functools.partial(open_deepspeed, spec),
        arch.table,
        config,
        args.output_dir,
        overwrite=args.overwrite,
        workers=args.workers,
        quiet=args.quiet,
        label=str(spec.tag_dir),
        inputs=[checkpoint_dir, hf_dir],
        extra_files=tokenizer_files(hf_dir),
    )
