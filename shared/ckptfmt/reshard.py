"""``reshard``: a checkpoint at one tensor/pipeline-parallel layout rewritten at another, without the source model.

Per pipeline stage of the new layout, tensor by tensor in the writers' order: the source ranks' parts of one
tensor are merged (``sharding.unshard``), split for every new tensor-parallel rank (``sharding.shard``) and
streamed into their rank files. Memory holds one full tensor and its parts; the output is atomic, with a
manifest; the source's files are checked against its manifest while they are read.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .background import BackgroundRankFileWriter
from .config import CheckpointConfig
from .constants import CONFIG_FILE, DTYPES, RANK_FILE, TOKENIZER_DIR
from .errors import CheckpointError
from .io import BackgroundChecksums, RankFileReader, atomic_output_dir, write_manifest
from .names import expected_tensors, weight_only_layout_problems
from .sharding import shard as shard_tensor
from .sharding import unshard
from .validate import check_checkpoint

_LOCAL_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.")


@dataclass
class ReshardSummary:
    ranks: int
    tensors: int
    bytes: int
    seconds: float

    def line(self, output_dir: str | os.PathLike) -> str:
        return (
            f"{output_dir}: {self.ranks} rank file(s), {self.tensors} tensors, {self.bytes / 1e6:.1f} MB "
            f"in {self.seconds:.1f} s"
        )


def resharded_config(
    config: CheckpointConfig,
    tp_size: int,
    pp_size: int,
    use_parallel_embedding: bool | None = None,
    embedding_sharding_dim: int | None = None,
) -> CheckpointConfig:
    """``config`` at the new layout (and embedding sharding, when given); checked."""
    out = config.with_mapping(tp_size, pp_size)
    if use_parallel_embedding is not None:
        out.use_parallel_embedding = use_parallel_embedding
    if embedding_sharding_dim is not None:
        out.embedding_sharding_dim = embedding_sharding_dim
    out.check("new layout")
    if problems := weight_only_layout_problems(out):
        raise CheckpointError(f"new layout: {problems[0]}", problems)
    return out


class _Source:
    """The source checkpoint's rank files, addressed by (global tensor name, tp rank)."""

    def __init__(self, directory: Path, config: CheckpointConfig):
        self.config = config
        m = config.mapping
        self.readers = [RankFileReader(directory / RANK_FILE.format(rank=r)) for r in range(m.world_size)]
        self.layer_home = {
            layer: (p, local)
            for p in range(m.pp_size)
            for local, layer in enumerate(m.pp_layers(config.num_hidden_layers, p))
        }

    def holds(self, global_name: str) -> bool:
        """Whether every tp rank holds the tensor (optional ones, ModelOpt's k/v cache scales, may be absent)."""
        try:
            name, stage = self.locate(global_name)
        except CheckpointError:
            return False
        m = self.config.mapping
        return all(name in self.readers[m.rank(t, stage)] for t in range(m.tp_size))

    def parts(self, global_name: str) -> tuple[str, list[np.ndarray]]:
        """(the name in the source's rank files, the parts of every tp rank holding it)."""
        name, stage = self.locate(global_name)
        m = self.config.mapping
        return name, [self.readers[m.rank(t, stage)][name] for t in range(m.tp_size)]

    def locate(self, global_name: str) -> tuple[str, int]:
        """(the name in the source's rank files, the pipeline stage holding it)."""
        m = self.config.mapping
        if match := _LOCAL_LAYER.match(global_name):
            stage, local = self.layer_home[int(match.group(1))]
            name = f"transformer.layers.{local}." + global_name[match.end() :]
        else:  # embeddings on the first stage, the final norm and lm_head on the last
            name = global_name
            holders = [p for p in range(m.pp_size) if name in self.readers[m.rank(0, p)]]
            if not holders:
                raise CheckpointError(f"{self.readers[0].path.parent}: no rank file holds tensor {name}")
            stage = holders[0]
        return name, stage

    def release(self) -> None:
        for reader in self.readers:
            reader.release_pages()


def _global(name: str, layers: range) -> str:
    return _LOCAL_LAYER.sub(lambda m: f"transformer.layers.{layers[int(m.group(1))]}.", name)


def _np_dtype(name: str) -> np.dtype:
    return DTYPES.get(name) or np.dtype(name)


def reshard(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    tp_size: int,
    pp_size: int,
    *,
    overwrite: bool = False,
    verify: bool = True,
    use_parallel_embedding: bool | None = None,
    embedding_sharding_dim: int | None = None,
) -> ReshardSummary:
    """Write checkpoint ``src`` at ``tp_size`` x ``pp_size`` into ``dst`` (tokenizer/ carried along)."""
    start = time.monotonic()
    src, dst = Path(src), Path(dst)
    config = check_checkpoint(src, hash_files=False)
    new = resharded_config(config, tp_size, pp_size, use_parallel_embedding, embedding_sharding_dim)
    checksums = BackgroundChecksums(src) if verify else None
    source = _Source(src, config)
    m = new.mapping
    tensors = nbytes = 0
    try:
        with atomic_output_dir(dst, overwrite=overwrite, inputs=[src]) as tmp:
            entries = {}
            for stage in range(m.pp_size):
                ranks = [m.rank(t, stage) for t in range(m.tp_size)]
                layers = m.pp_layers(new.num_hidden_layers, stage)
                specs = {
                    r: {
                        n: s
                        for n, s in expected_tensors(new, r).items()
                        if not s.optional or source.holds(_global(n, layers))
                    }
                    for r in ranks
                }
                writers = {
                    r: BackgroundRankFileWriter(
                        tmp / RANK_FILE.format(rank=r),
                        {n: (_np_dtype(s.dtype), s.shape) for n, s in specs[r].items()},
                        source.readers[0].metadata or None,
                    )
                    for r in ranks
                }
                try:
                    for name in specs[ranks[0]]:
                        full = unshard(name, source.parts(_global(name, layers))[1], config)
                        for r, writer in writers.items():
                            writer.write(name, shard_tensor(name, full, new, r))
                        tensors += len(writers)
                        del full
                        source.release()
                    for writer in writers.values():
                        writer.finish()
                    for writer in writers.values():
                        entries[writer.path.name] = writer.close()
                        nbytes += entries[writer.path.name]["size"]
                finally:
                    for writer in writers.values():
                        writer.__exit__(RuntimeError, None, None)  # closes files that close() did not
            _copy_regular_files(src / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
            new.save(tmp / CONFIG_FILE)
            if checksums is not None:
                checksums.wait()  # the source was what its manifest says, before anything is published
            write_manifest(tmp, entries)
    finally:
        if checksums is not None:
            checksums.cancel()
    return ReshardSummary(m.world_size, tensors, nbytes, time.monotonic() - start)


def _copy_regular_files(src: Path, dst: Path) -> None:
    """The regular files under ``src`` (a checkpoint's tokenizer/), never a symbolic link or what it points to."""
    if not src.is_dir() or src.is_symlink():
        return
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink() and not any(p.is_symlink() for p in path.relative_to(src).parents):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


__all__ = ["ReshardSummary", "reshard", "resharded_config"]
