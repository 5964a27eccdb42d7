"""Megatron / NeMo model hyper-parameters -> the checkpoint ``CheckpointConfig``.

Three spellings reach here as a dict: NeMo 1 ``model_config.yaml`` (``activation: fast-swiglu``,
``normalization: rmsnorm``, ``bias``), NeMo 2 ``context/model.yaml``'s ``config`` section
(``activation_func: {_target_: torch.nn.functional.silu}`` + ``gated_linear_unit``, ``add_bias_linear``)
and a bare Megatron-core YAML/JSON with TransformerConfig field names. Which architecture a variant
becomes is a table entry; a variant nothing here supports is named in the error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from ckptfmt import CheckpointConfig, CheckpointError

# activation spelling -> (base activation, gated). quick_gelu (x * sigmoid(1.702 x)) is none of these, so it
# is refused rather than computed as the tanh GELU
ACTIVATIONS: dict[str, tuple[str, bool]] = {
    "gelu": ("gelu", False),
    "relu": ("relu", False),
    "silu": ("silu", False),
    "approx-gelu": ("gelu_new", False),
    "openai-gelu": ("gelu_new", False),
    "swiglu": ("silu", True),
    "fast-swiglu": ("silu", True),
    "geglu": ("gelu", True),
    "fast-geglu": ("gelu", True),
    "reglu": ("relu", True),
    "fast-reglu": ("relu", True),
}
# Megatron's gelu is F.gelu (exact, erf) unless one of these is on: openai_gelu (Megatron-LM / NeMo 1 legacy) or the
# fused bias+activation kernels (bias_activation_fusion; NeMo 1's older bias_gelu_fusion), which compute the tanh
# approximation for gelu and geglu. Absent fields take Megatron-core's defaults (all False).
TANH_GELU_SWITCHES = ("openai_gelu", "bias_activation_fusion", "bias_gelu_fusion")
# base activation -> its gated spelling, for gated_linear_unit: true
GATED_SPELLINGS = {"silu": "swiglu", "gelu": "geglu", "relu": "reglu"}
NORMS = {"rmsnorm": "rmsnorm", "layernorm": "layernorm"}
DEFAULT_POSITIONS = "learned_absolute"  # Megatron-core's and NeMo's default
POSITIONS = {"rope": "rope_gpt_neox", "learned_absolute": "learned_absolute"}  # rope_gptj: rotary_interleaved

# (norm, gated) -> (architecture, hidden_act for a base activation)
ARCHITECTURES: dict[tuple[str, bool], tuple[str, dict[str, str]]] = {
    ("rmsnorm", True): ("LlamaForCausalLM", {"silu": "silu"}),
    ("layernorm", False): ("GPTForCausalLM", {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu"}),
    ("layernorm", True): ("GPTForCausalLM", {"silu": "swiglu", "gelu": "geglu"}),
}
# features whose presence makes a variant unsupported: field -> value that is fine
UNSUPPORTED_FEATURES: dict[str, Any] = {
    "num_moe_experts": None,
    "qk_layernorm": False,
    "multi_latent_attention": False,
    "layernorm_zero_centered_gamma": False,
    "apply_residual_connection_post_layernorm": False,
    "mtp_num_layers": None,
    "window_size": None,
    "moe_layer_freq_list": None,
}


@dataclass(frozen=True)
class MegatronModel:
    """The hyper-parameters that decide the checkpoint layout (read from any of the spellings)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_query_groups: int
    head_size: int
    max_positions: int | None
    norm: str
    norm_epsilon: float
    activation: str
    gated: bool
    bias: bool
    qkv_bias: bool
    positions: str
    rotary_percent: float
    rotary_scaling: dict | None
    rotary_base: float
    exact_gelu: bool = False  # gelu / geglu computed with erf (written as gelu_approximate: none)
    positions_defaulted: bool = False  # position_embedding_type absent: Megatron's default was taken


def _get(h: dict, source: str, *names: str, default: Any = ..., kind: type | tuple = object) -> Any:
    for name in names:
        if h.get(name) is not None:
            value = h[name]
            if isinstance(value, str) and kind in (float, (int, float)):  # PyYAML reads 1e-05 as a string
                with contextlib.suppress(ValueError):
                    value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
                raise CheckpointError(f"{source}: field {name} has an unexpected value {value!r}")
            return value
    if default is ...:
        raise CheckpointError(f"{source}: missing field {names[0]}")
    return default


def _activation(h: dict, source: str) -> tuple[str, bool]:
    """NeMo 1 ``activation: swiglu``; NeMo 2 / Megatron-core ``activation_func`` (a name, a dotted path or a
    ``_target_`` mapping) with ``gated_linear_unit``; Megatron-core's default is gelu."""
    field = "activation" if h.get("activation") is not None else "activation_func"
    value = h.get(field, "gelu")
    if isinstance(value, dict):
        value = value.get("_target_", "")
    name = str(value).rsplit(".", 1)[-1]
    if h.get("gated_linear_unit"):
        name = GATED_SPELLINGS.get(name, name)
    if name not in ACTIVATIONS:
        raise CheckpointError(
            f"{source}: unsupported Megatron variant: {field} {name!r} (supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    return ACTIVATIONS[name]


def read_model(h: dict, source: str) -> MegatronModel:
    """Parse and check hyper-parameters; ``source`` names the file in errors."""
    if h.get("mcore_gpt") is False:
        raise CheckpointError(
            f"{source}: unsupported Megatron variant: mcore_gpt: false (legacy NeMo GPT "
            "naming, model.language_model.*; only Megatron-core naming is supported)"
        )
    for name, fine in UNSUPPORTED_FEATURES.items():
        if h.get(name) not in (fine, None, False, 0):
            raise CheckpointError(f"{source}: unsupported Megatron variant: {name}: {h[name]!r}")
    norm = str(_get(h, source, "normalization", default="LayerNorm")).lower()
    if norm not in NORMS:
        raise CheckpointError(
            f"{source}: unsupported Megatron variant: normalization {norm!r} (supported: RMSNorm, LayerNorm)"
        )
    positions = str(_get(h, source, "position_embedding_type", default=DEFAULT_POSITIONS))
    if positions not in POSITIONS:
        raise CheckpointError(
            f"{source}: unsupported Megatron variant: position_embedding_type {positions!r} "
            f"(supported: {', '.join(POSITIONS)})"
        )
    activation, gated = _activation(h, source)
    hidden = _get(h, source, "hidden_size", kind=int)
    heads = _get(h, source, "num_attention_heads", kind=int)
    bias = bool(_get(h, source, "add_bias_linear", "bias", default=True))
    return MegatronModel(
        num_layers=_get(h, source, "num_layers", kind=int),
        hidden_size=hidden,
        ffn_hidden_size=_get(h, source, "ffn_hidden_size", default=4 * hidden, kind=int),
        num_heads=heads,
        num_query_groups=_get(h, source, "num_query_groups", default=heads, kind=int),
        head_size=_get(h, source, "kv_channels", default=hidden // heads, kind=int),
        max_positions=_get(
            h, source, "max_position_embeddings", "seq_length", "encoder_seq_length", default=None, kind=int
        ),
        norm=NORMS[norm],
        norm_epsilon=float(_get(h, source, "layernorm_epsilon", default=1e-5, kind=(int, float))),
        activation=activation,
        exact_gelu=activation == "gelu" and not any(h.get(k) is True for k in TANH_GELU_SWITCHES),
        gated=gated,
        bias=bias,
        qkv_bias=bool(_get(h, source, "add_qkv_bias", "qkv_bias", default=bias)),
        positions="rope_gptj" if positions == "rope" and h.get("rotary_interleaved") else POSITIONS[positions],
        rotary_percent=float(_get(h, source, "rotary_percent", "rotary_percentage", default=1.0, kind=(int, float))),
        rotary_base=float(_get(h, source, "rotary_base", default=10000, kind=(int, float))),
        rotary_scaling=_rotary_scaling(h, source),
        positions_defaulted=h.get("position_embedding_type") is None,
    )


def check_positions(model: MegatronModel, has_position_table: bool, source: str) -> None:
    """A config without ``position_embedding_type`` on a checkpoint without a position table: say what to set."""
    if model.positions == "learned_absolute" and not has_position_table:
        what = (
            f"no position_embedding_type (Megatron's default is {DEFAULT_POSITIONS})"
            if model.positions_defaulted
            else "position_embedding_type: learned_absolute"
        )
        raise CheckpointError(
            f"{source}: {what}, but the checkpoint has no embedding.position_embeddings.weight; "
            "set position_embedding_type: rope for a rotary (LLaMA-like) model"
        )


def _rotary_scaling(h: dict, source: str) -> dict | None:
    """TensorRT-LLM ``rotary_scaling`` from the three spellings of rope scaling (or None)."""
    found = []
    if h.get("scale_factor") is not None and h.get("old_context_len") is not None:  # NeMo 2 Llama31Config
        found.append(
            _llama3(
                _get(h, source, "scale_factor", kind=(int, float)),
                _get(h, source, "low_freq_factor", default=1.0, kind=(int, float)),
                _get(h, source, "high_freq_factor", default=4.0, kind=(int, float)),
                _get(h, source, "old_context_len", kind=int),
            )
        )
    if h.get("rope_scaling") or h.get("scale_positional_embedding"):  # Megatron-core / NeMo 1: fixed 1, 4, 8192
        found.append(_llama3(_get(h, source, "rope_scaling_factor", default=8.0, kind=(int, float)), 1.0, 4.0, 8192))
    factor = _get(h, source, "seq_len_interpolation_factor", default=None, kind=(int, float))
    if factor not in (None, 1):  # positions divided by factor == frequencies divided by factor
        found.append({"type": "linear", "rope_type": "linear", "factor": float(factor)})
    if len(found) > 1:
        raise CheckpointError(f"{source}: unsupported Megatron variant: two kinds of rope scaling at once")
    return found[0] if found else None


def _llama3(factor: float, low: float, high: float, old_len: int) -> dict:
    return {
        "type": "llama3",
        "rope_type": "llama3",
        "factor": float(factor),
        "low_freq_factor": float(low),
        "high_freq_factor": float(high),
        "original_max_position_embeddings": int(old_len),
    }


def checkpoint_config(model: MegatronModel, vocab_size: int, source: str) -> CheckpointConfig:
    """The (unsharded) checkpoint config of ``model``; dtype and mapping are set by the caller."""
    entry = ARCHITECTURES.get((model.norm, model.gated))
    hidden_act = entry[1].get(model.activation) if entry else None
    if entry is None or hidden_act is None:
        mlp = f"{'gated ' if model.gated else ''}{model.activation}"
        raise CheckpointError(f"{source}: unsupported Megatron variant: {model.norm} with a {mlp} MLP")
    extra: dict[str, Any] = {"bias": model.bias, "qkv_bias": model.qkv_bias}
    if model.exact_gelu:
        extra["gelu_approximate"] = "none"
    if model.head_size * model.num_heads != model.hidden_size:
        extra["head_size"] = model.head_size
    if model.positions.startswith("rope"):
        extra.update(rotary_base=model.rotary_base, rotary_pct=model.rotary_percent)
        if model.rotary_scaling:
            extra["rotary_scaling"] = model.rotary_scaling
    config = CheckpointConfig(
        architecture=entry[0],
        dtype="float32",
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        hidden_act=hidden_act,
        max_position_embeddings=model.max_positions,
        num_key_value_heads=model.num_query_groups,
        intermediate_size=model.ffn_hidden_size,
        norm_epsilon=model.norm_epsilon,
        position_embedding_type=model.positions,
        extra=extra,
    )
    return config
