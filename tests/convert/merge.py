"""Merge a checkpoint's rank files back into full tensors (global layer names) with ckptfmt.sharding.unshard."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ckptfmt import RANK_FILE, RankFileReader, load_config
from ckptfmt.sharding import unshard

_LOCAL = re.compile(r"^transformer\.layers\.(\d+)\.")


def merged_tensors(ckpt_dir: str | Path) -> dict[str, np.ndarray]:
    """Global canonical name -> full tensor (quantized tensors stay in their stored layout)."""
    config = load_config(ckpt_dir)
    m = config.mapping
    parts: dict[str, dict[int, np.ndarray]] = {}
    for rank in range(m.world_size):
        layers = m.layers_of_rank(config.num_hidden_layers, rank)
        with RankFileReader(Path(ckpt_dir) / RANK_FILE.format(rank=rank)) as reader:
            for name in reader.keys():  # noqa: SIM118 (RankFileReader is not a dict)
                glob = _LOCAL.sub(lambda x, layers=layers: f"transformer.layers.{layers[int(x.group(1))]}.", name)
                parts.setdefault(glob, {})[m.tp_rank(rank)] = np.array(reader[name])
    out = {}
    for name, by_rank in parts.items():
        assert sorted(by_rank) == list(range(m.tp_size)), f"{name}: ranks {sorted(by_rank)}"
        out[name] = unshard(name, [by_rank[r] for r in range(m.tp_size)], config)
    return out
