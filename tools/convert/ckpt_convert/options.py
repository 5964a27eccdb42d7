"""Conversion flags shared by every source (TensorRT-LLM ``convert_checkpoint.py`` names), defined once."""

from __future__ import annotations

import argparse
import dataclasses

from ckptfmt import DTYPES, CheckpointConfig, CheckpointError, QuantConfig
from ckptfmt.config import DTYPE_SPELLINGS, canonical_dtype

# flag -> the flag it only applies with (TensorRT-LLM's semantics); given alone it would silently change nothing
NEEDS: dict[str, str] = {
    "weight_only_precision": "use_weight_only",
    "per_group": "use_weight_only",
    "group_size": "per_group",
}
DEFAULTS = {"weight_only_precision": "int8", "group_size": 128}  # applied after the NEEDS check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Output, dtype, parallelism, embedding, weight-only and run flags."""
    parser.add_argument("--output_dir", required=True, help="checkpoint directory to create")
    parser.add_argument(
        "--dtype",
        default="auto",
        type=dtype_argument,
        help=f"weight dtype: {', '.join(DTYPE_SPELLINGS)} (auto: the source's dtype; float16 when unknown)",
    )
    par = parser.add_argument_group("parallelism")
    par.add_argument("--world_size", type=int, help="number of ranks (= tp_size when --tp_size is not given)")
    par.add_argument("--tp_size", type=int, help="tensor-parallel size (default 1, or world_size / pp_size)")
    par.add_argument("--pp_size", type=int, help="pipeline-parallel size (default 1, or world_size / tp_size)")
    par.add_argument(
        "--use_parallel_embedding",
        action="store_true",
        help="split the embedding across tp ranks (default: replicated)",
    )
    par.add_argument(
        "--embedding_sharding_dim",
        type=int,
        default=0,
        choices=(0, 1),
        help="0: split vocab rows, 1: split hidden columns",
    )
    par.add_argument(
        "--use_embedding_sharing",
        action="store_true",
        help="tied models: write no lm_head, share the embedding (pp 1; tp 1 or dim-0 parallel embedding)",
    )
    quant = parser.add_argument_group("weight-only quantization")
    quant.add_argument("--use_weight_only", action="store_true", help="store linear weights as int8/int4 + scales")
    quant.add_argument(
        "--weight_only_precision", choices=("int8", "int4"), help="with --use_weight_only (default int8)"
    )
    quant.add_argument(
        "--per_group", action="store_true", help="with --use_weight_only: one scale per group of input channels"
    )
    quant.add_argument("--group_size", type=int, help="input channels per scale with --per_group (default 128)")
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=int, default=1, help="convert ranks in this many processes")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")


def dtype_argument(value: str) -> str:
    """argparse ``type`` for --dtype: the canonical name of any usual spelling (fp16, half, bf16, ...)."""
    try:
        return canonical_dtype(value)
    except CheckpointError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_flag_dependencies(args: argparse.Namespace) -> None:
    """Refuse a flag given without the flag it applies with (``NEEDS``), then fill in ``DEFAULTS``."""
    for flag, needed in NEEDS.items():
        value = getattr(args, flag)
        if value not in (None, False) and not getattr(args, needed):
            shown = f"--{flag}" if value is True else f"--{flag} {value}"
            raise CheckpointError(f"{shown}: applies only with --{needed} (add --{needed}, or drop the flag)")
    for flag, default in DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)


def parallel_sizes(args: argparse.Namespace) -> tuple[int, int]:
    """(tp_size, pp_size) from --world_size/--tp_size/--pp_size, TensorRT-LLM style."""
    tp, pp, world = args.tp_size, args.pp_size, args.world_size
    for flag, value in (("--world_size", world), ("--tp_size", tp), ("--pp_size", pp)):
        if value is not None and value < 1:
            raise CheckpointError(f"{flag}: must be >= 1 (got {value})")
    if world is None:
        return tp or 1, pp or 1
    if tp is None and pp is None:
        tp, pp = world, 1
    elif tp is None:
        tp = world // pp
    elif pp is None:
        pp = world // tp
    if tp * pp != world:
        raise CheckpointError(
            f"--world_size {world}: must equal --tp_size x --pp_size ({args.tp_size} x {args.pp_size})"
        )
    return tp, pp


def apply_arguments(
    config: CheckpointConfig, args: argparse.Namespace, source_dtype: str | None, tied: bool
) -> tuple[CheckpointConfig, list[str]]:
    """The target config: ``config`` (the model) with the flags applied; also returns warnings."""
    if args.workers < 1:
        raise CheckpointError(f"--workers: must be >= 1 (got {args.workers})")
    check_flag_dependencies(args)
    if args.per_group and args.group_size < 1:
        raise CheckpointError(f"--group_size: must be >= 1 (got {args.group_size})")
    tp, pp = parallel_sizes(args)
    out = config.with_mapping(tp, pp)
    auto = source_dtype if source_dtype is not None and source_dtype in DTYPES else "float16"
    out.dtype = args.dtype if args.dtype != "auto" else auto
    out.use_parallel_embedding = args.use_parallel_embedding
    out.embedding_sharding_dim = args.embedding_sharding_dim
    warnings = []
    if args.use_embedding_sharing:
        reason = embedding_sharing_blocker(tied, tp, pp, args.use_parallel_embedding, args.embedding_sharding_dim)
        if reason:
            warnings.append(f"--use_embedding_sharing ignored: {reason}; lm_head written separately")
        out.share_embedding_table = reason is None
    out.quantization = dataclasses.replace(
        QuantConfig(),
        use_weight_only=args.use_weight_only,
        weight_only_precision=args.weight_only_precision,
        per_group=args.per_group,
        group_size=args.group_size,
    )
    return out, warnings


def embedding_sharing_blocker(tied: bool, tp: int, pp: int, parallel: bool, dim: int) -> str | None:
    """Why the lm_head cannot share the embedding table, or None when it can."""
    if not tied:
        return "the model's lm_head is not tied to its embedding"
    if pp > 1:
        return "needs pp_size 1"
    if tp > 1 and not (parallel and dim == 0):
        return "with tp_size > 1 it needs --use_parallel_embedding --embedding_sharding_dim 0"
    return None
