"""Weight-only int8 / int4 and INT4 AWQ checkpoints made from a float one by our own code.

For benchmarks and tests of the packed-weight paths on models no quantizer run made (random weights). int8 and
int4 (``W8A16``, ``W4A16``, per channel; ``W4A16_GPTQ`` per group): ``ckptfmt.quant.quantize_weight_only``.
INT4 AWQ (``W4A16_AWQ`` with pre-quant scales, ModelOpt's layout): a per-input-column smoothing
``s_k = sqrt(max_n |W[n, k]|)`` (normalized to geometric mean 1, stored as the pre-quant scale), ``W / s``
quantized symmetrically to int4 per row and group of ``group`` inputs. The smoothing comes from the weight
alone (no activation statistics, so it is not AWQ's search); the layout and what the executors compute from it
are AWQ's. Real checkpoints come from ``ckpt-convert hf --qformat int4_awq`` (ModelOpt's calibration).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptfmt import RankFileReader, expected_tensors, load_config, save_checkpoint
from ckptfmt.config import CheckpointConfig
from ckptfmt.constants import DTYPES
from ckptfmt.names import PER_CHANNEL_SCALE, PREQUANT_SCALE, WEIGHTS_SCALE
from ckptfmt.quant import pack_int4, quantize_weight_only

MODES = ("int8", "int4", "int4_gptq", "int4_awq")


def quantization(mode: str, group: int) -> dict:
    """config.json ``quantization`` of ``mode``."""
    modes: dict[str, dict] = {
        "int8": {"quant_algo": "W8A16"},
        "int4": {"quant_algo": "W4A16"},
        "int4_gptq": {"quant_algo": "W4A16_GPTQ", "group_size": group},
        "int4_awq": {"quant_algo": "W4A16_AWQ", "group_size": group, "pre_quant_scale": True},
    }
    return modes[mode]


def awq_codes(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 ``[out/2, in]`` packed codes, float32 ``[out, in/group]`` scales, float32 ``[in]`` pre-quant scale)
    of a float ``[out, in]`` weight, so that ``(x * pre) @ dequant.T`` approximates ``x @ w.T``."""
    w = np.asarray(w, dtype=np.float32)
    col = np.sqrt(np.maximum(np.abs(w).max(axis=0), 1e-12))
    pre = (col / np.exp(np.log(col).mean())).astype(np.float32)
    out, k = w.shape
    grouped = (w / pre[None, :]).reshape(out, k // group, group)
    scale = np.abs(grouped).max(axis=2) / 7
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.rint(grouped / scale[:, :, None]), -8, 7).astype(np.int8).reshape(out, k)
    return pack_int4(q.T).T.copy(), scale, pre


def quantize_wq(src: Path, dst: Path, mode: str, group: int = 128) -> CheckpointConfig:
    """Write the ``mode`` (``MODES``) checkpoint of the tp 1 float checkpoint ``src`` to ``dst``."""
    config = load_config(src)
    if config.mapping.world_size != 1 or config.quantization.quant_algo:
        raise ValueError(f"{src}: wq_quantize takes an unquantized tp 1 x pp 1 checkpoint")
    out = CheckpointConfig.from_dict({**config.to_dict(), "quantization": quantization(mode, group)}).check()
    dtype = DTYPES[config.dtype]
    tensors = {}
    specs = expected_tensors(out, 0)
    with RankFileReader(Path(src) / "rank0.safetensors") as reader:
        for name in specs:
            base, _, leaf = name.rpartition(".")
            if leaf == "weight" and f"{base}.{WEIGHTS_SCALE}" in specs:
                codes, scale, pre = awq_codes(np.asarray(reader[name], dtype=np.float32), group)
                tensors[name], tensors[f"{base}.{WEIGHTS_SCALE}"] = codes, scale
                tensors[f"{base}.{PREQUANT_SCALE}"] = pre.astype(dtype)
            elif leaf == "weight" and f"{base}.{PER_CHANNEL_SCALE}" in specs:
                precision = "int8" if mode == "int8" else "int4"
                w = np.asarray(reader[name], dtype=np.float32)
                codes, scale = quantize_weight_only(w, precision, group if mode == "int4_gptq" else None)
                tensors[name], tensors[f"{base}.{PER_CHANNEL_SCALE}"] = codes, scale.astype(dtype)
            elif name not in tensors:
                tensors[name] = np.array(reader[name])
    save_checkpoint(dst, out, {0: tensors}, overwrite=True)
    return out
