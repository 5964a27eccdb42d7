"""A checkpoint of random tensors with exactly the names, shapes and dtypes a config expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptfmt.config import CheckpointConfig
from ckptfmt.constants import DTYPES
from ckptfmt.io import save_checkpoint
from ckptfmt.names import expected_tensors
from ckptfmt.quant import pack_int4


def random_checkpoint(path: str | Path, config: CheckpointConfig, seed: int = 0) -> Path:
    """Write ``config`` with random tensors of every expected shape (int4 weights packed)."""
    rng = np.random.default_rng(seed)
    ranks = {}
    for rank in range(config.mapping.world_size):
        tensors = {}
        for name, spec in expected_tensors(config, rank).items():
            if spec.dtype == "int8" and config.quantization.weight_only == "int4":
                full = (*spec.shape[:-1], spec.shape[-1] * 2)
                tensors[name] = pack_int4(rng.integers(-8, 8, size=full, dtype=np.int8))
            elif spec.dtype == "int8":
                tensors[name] = rng.integers(-128, 128, size=spec.shape, dtype=np.int8)
            else:
                scale = 0.01 if name.endswith("per_channel_scale") else 0.05
                tensors[name] = (rng.standard_normal(spec.shape, dtype=np.float32) * scale).astype(DTYPES[spec.dtype])
        ranks[rank] = tensors
    save_checkpoint(path, config, ranks)
    return Path(path)
