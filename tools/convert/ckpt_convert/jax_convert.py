"""``ckpt-convert jax``: orbax checkpoints (OCDBT or per-array zarr, ``CheckpointManager`` steps) and flax msgpack
files -> checkpoint, read with tensorstore (``jax_orbax``) or our own msgpack walker (``jax_msgpack``), no jax.

A JAX tree stores no architecture: ``--model_config`` (an HF ``config.json`` or its folder) gives it and picks the
JAX layout table (``jax_tables.TABLES``); the tree's leaves become HF-named tensors (``jax_source``) that go through
the same HF mapping tables as ``ckpt-convert hf``. Tokenizer files next to the model config are carried along.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

from ckptfmt import CheckpointError

from . import options
from .deepspeed_convert import config_folder, target_config
from .hf import model_config, tokenizer_files
from .jax_layout import check_links, locate
from .jax_source import Expect, open_jax
from .jax_tables import TABLES, Dims
from .producer import full_tensor_specs
from .stream import convert_checkpoint

DESCRIPTION = "JAX checkpoint: orbax (OCDBT or per-array, CheckpointManager steps) or flax msgpack (Gemma, LLaMA)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint_dir",
        required=True,
        help="orbax checkpoint folder (holding _METADATA), CheckpointManager directory (step folders), or a flax "
        ".msgpack file (or a folder holding one)",
    )
    parser.add_argument("--step", type=int, help="CheckpointManager step to read (default: the highest)")
    parser.add_argument(
        "--model_config",
        required=True,
        type=Path,
        help="the model's HF config.json, or its folder (tokenizer files there are carried along)",
    )
    options.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    checkpoint_dir = Path(args.checkpoint_dir)
    location = locate(checkpoint_dir, args.step)
    check_links(location, checkpoint_dir)
    hf_dir = config_folder(args.model_config)
    model, hf, arch = model_config(hf_dir)
    if hf.model_type not in TABLES:
        raise CheckpointError(
            f"{hf.path}: model_type {hf.model_type!r} has no known JAX layout (known: {', '.join(sorted(TABLES))})"
        )
    specs = full_tensor_specs(model).values()
    dims = Dims(model.hidden_size, model.vocab_size)
    expect = Expect(dims, model.num_hidden_layers, max(math.prod(s.shape) for s in specs))
    with open_jax(location, hf.model_type, expect) as source:
        dtypes = source.dtypes
        for line in source.notices:
            print(f"warning: {line}", file=sys.stderr)
    config = target_config(model, args, dtypes, arch.tied(hf))
    summary = convert_checkpoint(
        functools.partial(open_jax, location, hf.model_type, expect),
        arch.table,
        config,
        args.output_dir,
        overwrite=args.overwrite,
        workers=args.workers,
        quiet=args.quiet,
        label=str(location.path),
        inputs=[checkpoint_dir, hf_dir],
        extra_files=tokenizer_files(hf_dir),
    )
    if not args.quiet:
        print(summary.line(args.output_dir))
    return 0
