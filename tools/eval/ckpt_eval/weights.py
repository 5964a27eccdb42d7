"""Build one rank's ``Transformer`` on the meta device and fill it from its rank file, a tensor at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ml_dtypes
import numpy as np
import torch

from ckptfmt import RANK_FILE, CheckpointConfig, CheckpointError, RankFileReader, model_spec
from ckptfmt.names import LM_HEAD, VOCAB_EMBEDDING
from ckptfmt.sharding import split_padded

from .distributed import Parallel
from .model import RankShapes, Transformer
from .quantized import attach, pack_linears, packs_weights, quantizes_inputs, read_linear_weight
from .torch_dtypes import TORCH_DTYPES


def rank_shapes(config: CheckpointConfig, rank: int) -> RankShapes:
    m = config.mapping
    split = "none"
    if config.use_parallel_embedding and m.tp_size > 1:
        split = "rows" if config.embedding_sharding_dim == 0 else "cols"
    return RankShapes(
        layers=m.layers_of_rank(config.num_hidden_layers, rank),
        first_stage=m.is_first_stage(rank),
        last_stage=m.is_last_stage(rank),
        embedding_split=split,
        head_from_embedding=config.share_embedding_table,
    )


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A torch copy of a (memory-mapped, read-only) numpy array; bfloat16 included."""
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.array(a.view(np.int16))).view(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def read_tensor(reader: RankFileReader, name: str, config: CheckpointConfig) -> torch.Tensor:
    """Tensor ``name`` as stored, or dequantized to ``[out, in]`` when it is an FP8 / INT8 SmoothQuant weight
    (weight-only and INT4 AWQ linears keep their codes: ``quantized.pack_linears``)."""
    modelopt = read_linear_weight(reader, name, config)
    return modelopt if modelopt is not None else to_torch(reader[name])


def head_from_embedding(reader: RankFileReader, config: CheckpointConfig, par: Parallel) -> torch.Tensor:
    """lm_head rows of this rank taken from a shared vocab embedding (whole, row-split or column-split)."""
    table = to_torch(reader[VOCAB_EMBEDDING])
    split = rank_shapes(config, par.rank).embedding_split
    if split == "rows" or par.tp_size == 1:
        return table
    if split == "cols":
        table = par.all_gather(table.to(par.device), dim=1).cpu()
    return torch.from_numpy(np.ascontiguousarray(split_padded(table.numpy(), par.tp_size, par.tp_rank)))


def set_param(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, attr)
    if tuple(old.shape) != tuple(value.shape):
        raise CheckpointError(f"tensor {name}: shape {list(value.shape)}, the model expects {list(old.shape)}")
    module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """A ``CheckpointError`` raised inside names the rank file ``path`` it is about."""
    try:
        yield
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_model(directory: str | Path, config: CheckpointConfig, par: Parallel) -> Transformer:
    """This rank's model with its weights in the checkpoint dtype on ``par.device``."""
    spec = model_spec(config)  # the Transformer refuses what this backend does not compute
    shapes = rank_shapes(config, par.rank)
    dtype = TORCH_DTYPES[config.dtype]
    with torch.device("meta"):
        model = Transformer(spec, shapes, par)
    path = Path(directory) / RANK_FILE.format(rank=par.rank)
    with RankFileReader(path) as reader:
        if packs_weights(config):  # weight-only / INT4 AWQ linears: codes, no float copy
            with naming(path):
                pack_linears(model, reader, config, par.device, dtype)
        for name, _ in list(model.named_parameters()):
            if name not in reader and name == LM_HEAD and shapes.head_from_embedding:
                value = head_from_embedding(reader, config, par)
            elif name not in reader:
                raise CheckpointError(f"{path}: missing tensor {name}")
            else:
                value = read_tensor(reader, name, config)
            with naming(path):
                set_param(model, name, value.to(device=par.device, dtype=dtype))
        with naming(path):
            attach(model, reader, config, par.device, dtype)  # activation and KV-cache quantization
    for layer in model.transformer.blocks():
        if not quantizes_inputs(config):  # fc and gate keep their own input quantization otherwise
            layer.mlp.fuse()
    if model.rotary is not None:
        model.rotary.inv_freq = model.rotary.inv_freq.to(par.device)
    if model.alibi is not None:
        model.alibi = model.alibi.to(par.device)
    model.window = model.spec.sliding_window
    return model.eval()
