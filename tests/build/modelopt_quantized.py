"""ModelOpt-style quantized TensorRT-LLM checkpoints made from the unquantized ModelOpt fixtures.

ModelOpt's ``export_tensorrt_llm_checkpoint`` of a quantized model writes ``quantization.quant_algo`` (and its
options) in config.json and, next to each linear's ``weight``, ``weights_scaling_factor`` (plus
``activation_scaling_factor`` for FP8 / SmoothQuant and ``prequant_scaling_factor`` for AWQ / SmoothQuant),
the weight itself in fp8 / int8 / packed int4. These are written with those names, dtypes and config
fields (not by ModelOpt itself, which is not installed here) to test what ckpt-build says about them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

FIXTURES = Path(__file__).parents[1] / "fixtures" / "modelopt"
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")

# name -> (quantization section of config.json, weight dtype, extra per-linear tensors)
SCHEMES: dict[str, tuple[dict, str, tuple[str, ...]]] = {
    "fp8": ({"quant_algo": "FP8", "kv_cache_quant_algo": None}, "fp8", ("activation_scaling_factor",)),
    "int8_sq": (
        {"quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": None},
        "int8",
        ("activation_scaling_factor", "prequant_scaling_factor"),
    ),
    "int4_awq": (
        {
            "quant_algo": "W4A16_AWQ",
            "kv_cache_quant_algo": None,
            "group_size": 128,
            "has_zero_point": False,
            "pre_quant_scale": True,
        },
        "int4",
        ("prequant_scaling_factor",),
    ),
}


def quantized_export(dst: Path, scheme: str, model: str = "llama_gqa") -> Path:
    """A copy of ``model``'s tp1_pp1 ModelOpt export rewritten as a ``scheme``-quantized export."""
    quant, wdtype, extra = SCHEMES[scheme]
    shutil.copytree(FIXTURES / model / "tp1_pp1", dst)
    config = json.loads((dst / "config.json").read_text())
    config["quantization"] = quant
    (dst / "config.json").write_text(json.dumps(config, indent=4))
    (dst / "quant_cfg.json").write_text(json.dumps({**quant, "quantized_layers": {}}, indent=4))
    tensors = load_file(dst / "rank0.safetensors")
    for name in [
        n for n in tensors if n.endswith(".weight") and n.rsplit(".", 2)[-2] in {s.split(".")[1] for s in LINEARS}
    ]:
        w = tensors[name].astype(np.float32)
        base = name[: -len(".weight")]
        if wdtype == "fp8":
            tensors[name] = w.astype(ml_dtypes.float8_e4m3fn)
        elif wdtype == "int8":
            tensors[name] = np.clip(np.rint(w * 100), -127, 127).astype(np.int8)
        else:  # two int4 per byte along the input dim
            tensors[name] = np.zeros((w.shape[0], w.shape[1] // 2), np.int8)
        tensors[base + ".weights_scaling_factor"] = np.ones((1,), np.float32)
        for suffix in extra:
            tensors[f"{base}.{suffix}"] = np.ones((1,) if "activation" in suffix else (w.shape[1],), np.float16)
    save_file(tensors, dst / "rank0.safetensors", metadata={"format": "pt"})
    return dst
