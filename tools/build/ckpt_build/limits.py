"""Build limits and support checks, all before any engine is built (one-line ``CheckpointError`` each)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ckptfmt.config import CheckpointConfig
from ckptfmt.constants import DTYPES
from ckptfmt.engine import BuildConfig
from ckptfmt.errors import CheckpointError
from ckptfmt.names import model_spec
from ckptfmt.semantics import BUILDER, check_support

DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 1024

# quant_algo (ModelOpt / TensorRT-LLM spelling, by prefix) -> what the checkpoint holds; those of BUILT_ALGOS go
# on to the support table (ckptfmt.semantics: which of their variants the network computes), the others stop here
QUANTIZED = {
    "FP8": "FP8 weights and activations",
    "W8A8_SQ": "INT8 SmoothQuant (W8A8)",
    "W4A8": "INT4 weights with FP8 activations",
    "NVFP4": "NVFP4 weights",
    "MIXED_PRECISION": "per-layer mixed precision",
}
WEIGHT_ONLY_ALGOS = ("W8A16", "W4A16")
BUILT_ALGOS = ("FP8", "W8A8_SQ")  # TensorRT Q/DQ layers (network.quantized_matmul)
BUILT_KV_CACHE = ("INT8", "FP8")
SUPPORTED_QUANTIZATION = (
    "ckpt-build builds unquantized and weight-only int8/int4 checkpoints "
    "(W8A16, W4A16, per channel or per group, without zero points), ModelOpt's INT4 AWQ, "
    "FP8 and INT8 SmoothQuant (static activation scales) and INT8/FP8 KV caches"
)


@dataclass
class Limits:
    """What the user asked for; ``None`` means the default."""

    max_batch_size: int = 8
    max_input_len: int | None = None
    max_output_len: int | None = None
    max_seq_len: int | None = None
    max_beam_width: int = 1
    max_num_tokens: int | None = None
    logits_dtype: str | None = None
    gather_all_token_logits: bool = False
    plugin_config: dict = field(default_factory=dict)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise CheckpointError(f"--{name}: must be >= 1 (got {value})")


def resolve_limits(config: CheckpointConfig, limits: Limits) -> BuildConfig:
    """The build config for ``config``: defaults filled in, every limit checked against the model."""
    for name in (
        "max_batch_size",
        "max_input_len",
        "max_output_len",
        "max_seq_len",
        "max_beam_width",
        "max_num_tokens",
    ):
        _positive(name, getattr(limits, name))
    if limits.max_beam_width != 1:
        raise CheckpointError(
            f"--max_beam_width: only 1 is supported (got {limits.max_beam_width}); "
            "beam search is not implemented by these engines"
        )
    max_pos = config.max_position_embeddings
    learned = config.position_embedding_type == "learned_absolute"
    inp = limits.max_input_len
    if inp is None:
        inp = min(DEFAULT_INPUT_LEN, max(max_pos // 2, 1)) if max_pos else DEFAULT_INPUT_LEN
        if limits.max_seq_len is not None:
            inp = min(inp, limits.max_seq_len)
    out = limits.max_output_len
    if limits.max_seq_len is not None:
        if limits.max_seq_len < inp:
            raise CheckpointError(f"--max_seq_len: {limits.max_seq_len} is smaller than max_input_len {inp}")
        if out is not None and inp + out != limits.max_seq_len:
            raise CheckpointError(f"--max_seq_len: {limits.max_seq_len} != max_input_len {inp} + max_output_len {out}")
        out = limits.max_seq_len - inp
    if out is None:
        out = min(DEFAULT_OUTPUT_LEN, max(max_pos - inp, 1)) if max_pos else DEFAULT_OUTPUT_LEN
    if learned and max_pos is not None and inp + out > max_pos:
        raise CheckpointError(
            f"--max_input_len + --max_output_len: {inp} + {out} = {inp + out} exceeds "
            f"max_position_embeddings {max_pos} of this model (learned positions)"
        )
    if max_pos is not None and inp + out > max_pos:  # rotary positions run on, untrained: built as asked, said
        logging.getLogger(__name__).warning(
            "max_input_len + max_output_len: %d + %d = %d exceeds max_position_embeddings %d of this model",
            inp, out, inp + out, max_pos,
        )  # fmt: skip
    logits_dtype = limits.logits_dtype or config.logits_dtype
    if logits_dtype not in DTYPES:
        raise CheckpointError(f"--logits_dtype: must be one of {list(DTYPES)}, got {logits_dtype!r}")
    num_tokens = limits.max_num_tokens or limits.max_batch_size * inp
    return BuildConfig(
        max_batch_size=limits.max_batch_size,
        max_input_len=inp,
        max_output_len=out,
        max_seq_len=inp + out,
        max_beam_width=1,
        max_num_tokens=num_tokens,
        logits_dtype=logits_dtype,
        gather_last_token_logits=not limits.gather_all_token_logits,
        plugin_config=dict(limits.plugin_config),
    )


def describe_quantization(section: dict) -> str | None:
    """What a config's ``quantization`` section holds that ckpt-build cannot build (either spelling), or None."""
    algo = str(section.get("quant_algo") or "")
    algo = algo or ("FP8" if section.get("enable_fp8") else "W8A8_SQ" if section.get("use_smooth_quant") else "")
    parts = []
    if algo.startswith(BUILT_ALGOS):
        pass
    elif algo and not algo.startswith(WEIGHT_ONLY_ALGOS):
        what = next((v for k, v in QUANTIZED.items() if algo.startswith(k)), "an algorithm ckpt-build does not know")
        parts.append(f"quant_algo {algo}: {what}")
    elif (section.get("pre_quant_scale") and algo != "W4A16_AWQ") or section.get("has_zero_point"):
        extras = [
            n for k, n in (("pre_quant_scale", "pre-quant scales"), ("has_zero_point", "zero points")) if section.get(k)
        ]
        kind = f"{'INT4' if algo.startswith('W4') else 'INT8'} {algo.partition('_')[2]}".strip() if algo else ""
        label = f"quant_algo {algo}: {kind}" if algo else "weight-only"
        parts.append(f"{label} with {' and '.join(extras)}")
    kv = section.get("kv_cache_quant_algo")
    kv = kv or ("INT8" if section.get("int8_kv_cache") else "FP8" if section.get("fp8_kv_cache") else None)
    if kv and str(kv) not in BUILT_KV_CACHE:
        parts.append(f"{kv} KV cache")
    return ", ".join(parts) or None


def refuse_quantized(checkpoint_dir: Path) -> None:
    """One line for a quantized (ModelOpt, SmoothQuant, FP8...) checkpoint, before its tensors are validated.

    Read from config.json as written, so that algorithms ckptfmt does not parse are named too; a missing or
    unreadable config is left to the checkpoint validation.
    """
    path = Path(checkpoint_dir) / "config.json"
    try:
        src = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    section = src.get("quantization") if isinstance(src, dict) else None
    what = describe_quantization(section) if isinstance(section, dict) else None
    if what:
        producer = src.get("producer") if isinstance(src.get("producer"), dict) else {}
        by = f"{producer.get('name', '')} {producer.get('version', '')}".strip().replace("modelopt", "ModelOpt")
        raise CheckpointError(
            f"{path}: quantization: a quantized checkpoint ({by + ' export, ' if by else ''}{what}); "
            f"{SUPPORTED_QUANTIZATION}"
        )


def check_supported(config: CheckpointConfig) -> None:
    """Reject what the network cannot express: the support table's features (``ckptfmt.semantics``, one line
    naming the field, the value and the executors that compute it) and the quantization details it does not
    model."""
    q = config.quantization
    if q.use_weight_only and q.extra.get("has_zero_point"):
        raise CheckpointError("config.json: quantization.has_zero_point: zero points are not supported by ckpt-build")
    if q.use_weight_only and q.extra.get("pre_quant_scale") and q.scheme != "int4_awq":
        raise CheckpointError(
            "config.json: quantization.pre_quant_scale: AWQ pre-quant scales are not supported by ckpt-build"
        )
    spec = model_spec(config)
    check_support(spec, BUILDER)
    if spec.rotary and (spec.rotary_dim <= 0 or spec.rotary_dim % 2 or spec.rotary_dim > spec.head_size):
        raise CheckpointError(
            f"config.json: rotary_dim: {spec.rotary_dim} must be even and within head_size {spec.head_size}"
        )


def supported_build(config: CheckpointConfig, limits: Limits, build: BuildConfig | None = None) -> BuildConfig:
    """The limits an engine of ``config`` is built for (``build``, else resolved from ``limits``), after every
    check of what the network computes (the support table). ``ckpt-build`` and its graph executed on torch both
    go through here, so they refuse the same models."""
    check_supported(config)
    return build or resolve_limits(config, limits)
