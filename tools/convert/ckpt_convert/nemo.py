"""``ckpt-convert nemo``: NeMo 1 ``.nemo`` archives, NeMo 2 directories and Megatron-core torch_dist checkpoints.

Nothing from nemo_toolkit or megatron is imported: tar + YAML for the archive, torch's weights-only unpickler for
NeMo 1 pickles and torch_dist chunks (``torch_pickle``: tensors read with ``preadv``, one tensor, or one layer of a
stacked tensor, at a time; in place inside an uncompressed ``.nemo``). The shared streaming machinery
(``stream.convert_checkpoint``) writes the checkpoint; tokenizer files are carried into ``<output_dir>/tokenizer/``
inside the same atomic output directory.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ckptfmt import TOKENIZER_DIR, CheckpointError
from ckptfmt.io import check_output_dir, claim_output

from . import options
from .megatron_config import check_positions, checkpoint_config, read_model
from .megatron_dist import DistSource
from .megatron_shards import ShardedSource
from .megatron_table import MEGATRON_GPT
from .nemo_archive import Located, extract, locate
from .stream import convert_checkpoint

DESCRIPTION = "NeMo 1 .nemo (archive or directory), NeMo 2 checkpoint directory or Megatron-core torch_dist directory"
EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT_LAYER = "output_layer.weight"
POSITION_TABLE = "embedding.position_embeddings.weight"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nemo_ckpt_path",
        required=True,
        help=".nemo file, its extracted directory, a NeMo 2 or a Megatron-core checkpoint directory",
    )
    parser.add_argument(
        "--model_config",
        type=Path,
        help="YAML/JSON of Megatron hyper-parameters (required for bare Megatron-core checkpoints; "
        "overrides the checkpoint's own otherwise)",
    )
    options.add_arguments(parser)


@dataclass(frozen=True)
class SourceSpec:
    """Picklable description of the weights (workers reopen the source from it)."""

    dist_dir: Path | None
    dist_files: dict = field(default_factory=dict)
    shard_files: dict = field(default_factory=dict)
    num_layers: int = 0
    gated: bool = False


def open_source(spec: SourceSpec) -> DistSource | ShardedSource:
    if spec.dist_dir is not None:
        return DistSource(spec.dist_dir, spec.num_layers, spec.dist_files)
    return ShardedSource(spec.shard_files, spec.gated)


def run(args: argparse.Namespace) -> int:
    _require_extra()
    path = Path(args.nemo_ckpt_path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.overwrite, inputs=[path])
    # claimed for the whole run: the extraction is scratch space (.NAME.tmp-nemo-*) that the next run on the same
    # output reclaims if this one is killed; atomic_output_dir inside does not lock again
    with claim_output(output_dir, args.overwrite, inputs=[path]):
        work, in_archive = None, {}
        try:  # Ctrl-C / SIGTERM (ckptfmt.entry.run_main) unwind through the removal of the work directory
            if path.is_dir():
                root = path
            else:
                root = work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-nemo-", dir=output_dir.parent))
                in_archive = extract(path, work)
            summary = convert_located(locate(root, args.model_config, str(path), in_archive), args, str(path))
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
    if not args.quiet:
        print(summary, file=sys.stderr)
    return 0


def _require_extra() -> None:
    import importlib.util

    missing = [
        dist for module, dist in (("yaml", "PyYAML"), ("torch", "torch")) if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise CheckpointError(f"ckpt-convert nemo needs {' and '.join(missing)}: pip install 'ckpt-convert[nemo]'")


def convert_located(found: Located, args: argparse.Namespace, label: str) -> str:
    model = read_model(found.hparams, found.config_file)
    spec = SourceSpec(found.dist_dir, found.dist_files, found.shard_files, model.num_layers, model.gated)
    with open_source(spec) as source:
        if EMBEDDING not in source:
            raise CheckpointError(f"{label}: no tensor {EMBEDDING} (not a Megatron-core GPT checkpoint?)")
        vocab, dtypes = source.get(EMBEDDING).shape[0], source.dtypes
        tied = OUTPUT_LAYER not in source  # the tensors decide, not share_embeddings_and_output_weights
        check_positions(model, POSITION_TABLE in source, found.config_file)
    config = checkpoint_config(model, vocab, found.config_file)
    source_dtype = next(iter(dtypes)) if len(dtypes) == 1 else None
    config, warnings = options.apply_arguments(config, args, source_dtype, tied=tied)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    output_dir = Path(args.output_dir)
    summary = convert_checkpoint(
        functools.partial(open_source, spec),
        MEGATRON_GPT,
        config,
        output_dir,
        overwrite=args.overwrite,
        workers=args.workers,
        quiet=args.quiet,
        label=label,
        inputs=[Path(args.nemo_ckpt_path)],
        extra_files={f"{TOKENIZER_DIR}/{name}": src for name, src in found.tokenizer_files.items()},
    )
    return summary.line(output_dir)
