"""An FP8 checkpoint (ModelOpt's per-tensor layout, ``quant_algo: FP8``) made from a float one by our own code.

For benchmarks and tests of the FP8 paths on models no ModelOpt run made (random weights): each layer linear's
weight becomes e4m3 codes with the scale ``max|w| / 448``; its activation scale is ``max|x| / 448`` of its
input over a calibration prefill in the torch backend (float). Real checkpoints come from
``ckpt-convert hf --qformat fp8`` (ModelOpt's calibration).
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import torch

from ckptfmt import RankFileReader, expected_tensors, load_config, save_checkpoint
from ckptfmt.config import CheckpointConfig
from ckptfmt.names import ACTIVATION_SCALE, WEIGHTS_SCALE

from .distributed import init_parallel
from .quantized import FP8_MAX
from .weights import load_model


def input_amax(src: Path, tokens: torch.Tensor, device: str) -> dict[str, float]:
    """``{linear name: max |input|}`` of every layer linear of ``src`` over a prefill of ``tokens`` [1, t]."""
    config = load_config(src)
    model = load_model(src, config, init_parallel(config.mapping, device))
    seen: dict[str, float] = {}
    hooks = []
    for i, layer in enumerate(model.transformer.blocks()):
        prefix = f"transformer.layers.{i}."
        inputs = {  # module -> the linears reading its input (a gated MLP's fc and gate: one stacked GEMM)
            "attention.qkv": ["attention.qkv"],
            "attention.dense": ["attention.dense"],
            "mlp": ["mlp.fc", "mlp.gate"] if layer.mlp.gate is not None else ["mlp.fc"],
            "mlp.proj": ["mlp.proj"],
        }
        for module, names in inputs.items():

            def record(_module, args, names=tuple(prefix + n for n in names)) -> None:
                for name in names:
                    seen[name] = max(seen.get(name, 0.0), float(args[0].float().abs().max()))

            hooks.append(layer.get_submodule(module).register_forward_pre_hook(record))
    t = tokens.shape[1]
    model.setup_cache(1, t)
    with torch.inference_mode():
        model(tokens.to(device), torch.arange(t, device=device), torch.zeros(1, dtype=torch.long, device=device))
    for hook in hooks:
        hook.remove()
    return seen


def fp8_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(e4m3 codes, float32 scale [1]) of a float weight, per tensor: scale = max|w| / 448."""
    t = torch.from_numpy(np.array(w, dtype=np.float32))
    amax = float(t.abs().max())
    scale = np.float32(amax / FP8_MAX if amax > 0 else 1.0)
    codes = (t / torch.tensor(scale)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn), np.array([scale], dtype=np.float32)


def quantize_fp8(src: Path, dst: Path, tokens: torch.Tensor, device: str = "cpu") -> CheckpointConfig:
    """Write the FP8 checkpoint of the tp 1 float checkpoint ``src`` to ``dst``, calibrated on ``tokens``."""
    config = load_config(src)
    if config.mapping.world_size != 1 or config.quantization.quant_algo:
        raise ValueError(f"{src}: fp8_quantize takes an unquantized tp 1 x pp 1 checkpoint")
    amax = input_amax(src, tokens, device)
    out = CheckpointConfig.from_dict({**config.to_dict(), "quantization": {"quant_algo": "FP8"}}).check()
    tensors = {}
    specs = expected_tensors(out, 0)
    with RankFileReader(Path(src) / "rank0.safetensors") as reader:
        for name in specs:
            base, _, leaf = name.rpartition(".")
            if leaf == "weight" and f"{base}.{WEIGHTS_SCALE}" in specs:
                tensors[name], tensors[f"{base}.{WEIGHTS_SCALE}"] = fp8_codes(reader[name])
                a = amax.get(base, 0.0)
                tensors[f"{base}.{ACTIVATION_SCALE}"] = np.array([a / FP8_MAX if a > 0 else 1.0], np.float32)
            elif name not in tensors:
                tensors[name] = np.array(reader[name])
    save_checkpoint(dst, out, {0: tensors}, overwrite=True)
    return out
