"""Quantization flags of ``ckpt-convert hf`` (TensorRT-LLM ``quantize.py`` names), defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CALIB_TEXT = Path(__file__).resolve().parent / "data" / "calib.txt"
QFORMATS = ("fp8", "int8_sq", "int4_awq")
KV_CACHE_DTYPES = ("int8", "fp8")
PEAK_MEMORY = (
    "Quantizing holds the whole model in float32 (4 bytes a parameter) with ModelOpt's quantizers: peak RSS about "
    "0.7 GB (torch, transformers, ModelOpt) plus twice the float32 model size (measured: 1.16 GB for 58M parameters)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    quant = parser.add_argument_group(
        "quantization with NVIDIA ModelOpt (pip install 'ckpt-convert[quant]')",
        f"Calibrate and quantize here, on a GPU when present, else on the CPU. {PEAK_MEMORY}.",
    )
    quant.add_argument("--qformat", choices=QFORMATS, help="FP8, INT8 SmoothQuant (per channel) or INT4 AWQ")
    quant.add_argument(
        "--smoothquant",
        "-sq",
        type=float,
        metavar="ALPHA",
        help="INT8 SmoothQuant with migration strength ALPHA in [0, 1] (convert_checkpoint.py's flag; implies "
        "--qformat int8_sq, whose own ALPHA is ModelOpt's 1.0)",
    )
    quant.add_argument(
        "--per_token",
        action="store_true",
        help="int8_sq: scale each token's activations at run time instead of by one calibrated scale per linear "
        "(W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN)",
    )
    quant.add_argument(
        "--per_channel",
        action="store_true",
        help="with --smoothquant: a weight scale per output channel (else one per tensor, as convert_checkpoint.py); "
        "--qformat int8_sq always has them",
    )
    quant.add_argument("--kv_cache_dtype", choices=KV_CACHE_DTYPES, help="with --qformat: quantize the KV cache too")
    quant.add_argument("--calib_size", type=int, default=512, help="calibration samples (default 512)")
    quant.add_argument(
        "--calib_dataset",
        type=Path,
        default=DEFAULT_CALIB_TEXT,
        help="calibration text, one sample per paragraph (blank-line separated); default: the text shipped here",
    )
    quant.add_argument("--calib_max_seq_length", type=int, default=512, help="tokens per sample, at most (default 512)")
    quant.add_argument(
        "--awq_block_size", type=int, default=128, help="int4_awq: input channels per weight scale (default 128)"
    )
