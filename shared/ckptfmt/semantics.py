"""Model semantics, declared once: the config fields that change the math, and which executor computes what.

Three executors run the models: the torch backend (``ckpt-run --backend torch``), the fused one-token decode
kernels (``--compile``) and ``ckpt-build``'s network. ``ModelSpec`` (``names.model_spec``) is the only reader of
the fields below; each executor asks ``check_support`` before it computes anything, and refuses in one line
what it does not compute, naming the executors that do. ``ckptfmt inspect`` prints ``support_rows``.

The format's meanings are TensorRT-LLM's. One is ours: ``hidden_act: gelu`` (and ``geglu``) is the tanh
approximation, as TensorRT-LLM computes it; a model whose source computes the exact (erf) GELU carries the
extension ``gelu_approximate: "none"`` (TensorRT-LLM ignores it and computes its tanh form).

Some math comes with the architecture, as in TensorRT-LLM: Gemma's embedding is multiplied by
sqrt(hidden_size); its norm weights are stored as (1 + w), as TensorRT-LLM's converter writes them, so every
executor computes a plain RMSNorm; Gemma 2/3 norm the attention and MLP outputs too (TensorRT-LLM's
``inter_layernorms``, written but decided by the architecture), Gemma 3 norms q and k per head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np

    from .names import ModelSpec


@dataclass(frozen=True)
class Field:
    """A model-specific key of config.json that changes the math (the common ones are in ``config.TOP_FIELDS``).

    ``trtllm``: TensorRT-LLM (or ModelOpt) writes and reads this key; False: an extension of ours, which
    TensorRT-LLM ignores. ``aliases``: other keys read for it when it is absent (first present wins).
    """

    key: str
    types: tuple[type, ...]
    trtllm: bool
    meaning: str
    aliases: tuple[str, ...] = ()


MODEL_FIELDS: dict[str, Field] = {
    f.key: f
    for f in (
        Field("head_size", (int,), True, "width of one head when not hidden_size / num_attention_heads"),
        Field("rotary_dim", (int,), True, "rotated channels of a head (GPT-J); else rotary_pct x head_size"),
        Field("rotary_pct", (int, float), True, "fraction of a head that is rotated (GPT-NeoX), default 1"),
        Field("rotary_base", (int, float), True, "rotary base theta, default 10000", ("rotary_emb_base",)),
        Field("rotary_scaling", (dict,), True, "rotary frequency scaling: {type: linear | llama3, factor, ...}"),
        Field("bias", (bool,), True, "biases on qkv, dense, fc, gate and proj (default: the family's)"),
        Field("qkv_bias", (bool,), False, "a bias on qkv only (Qwen2)", ("attn_bias",)),
        Field("new_decoder_architecture", (bool,), True, "Falcon-40B layout: separate attention and MLP norms"),
        Field("parallel_attention", (bool,), True, "Falcon: attention and MLP read the same norm, in parallel"),
        Field("use_parallel_residual", (bool,), False, "GPT-NeoX: x + attn(n1(x)) + mlp(n2(x)), default true"),
        Field("do_layer_norm_before", (bool,), True, "OPT: false puts each norm after its residual add"),
        Field("word_embed_proj_dim", (int,), True, "OPT: embedding width, projected to hidden_size"),
        Field("lm_head_bias", (bool,), True, "a bias on lm_head"),
        Field(
            "sliding_window",
            (int,),
            False,
            "attention sees the last N positions only (Mistral, Qwen2; Gemma 2/3: the local layers; TensorRT-LLM "
            "reads it for Gemma 3)",
        ),
        Field("use_sliding_window", (bool,), False, "Qwen2: false turns sliding_window off"),
        Field("gelu_approximate", (str,), False, "'none': gelu/geglu are the exact erf GELU; default 'tanh'"),
        Field(
            "_sliding_window_pattern",
            (int,),
            True,
            "Gemma 3 (ours for Gemma 2: 2): layer i is global when (i + 1) % N == 0, else local (the window)",
            ("sliding_window_pattern",),
        ),
        Field("rope_local_base_freq", (int, float), True, "Gemma 3: rotary base of the local layers, unscaled"),
        Field("query_pre_attn_scalar", (int, float), True, "Gemma 2/3: scores scaled by 1/sqrt(N), not head_size"),
        Field("attn_logit_softcapping", (int, float), True, "scores = cap * tanh(scores / cap); null or 0: off"),
        Field("final_logit_softcapping", (int, float), True, "logits = cap * tanh(logits / cap); null or 0: off"),
    )
}

# Keys other models use for math no executor computes yet; any value but the neutral one is refused.
UNIMPLEMENTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "embedding_multiplier": (None, 1, 1.0),
    "residual_multiplier": (None, 1, 1.0),
    "attention_multiplier": (None,),
    "logits_scaling": (None, 1, 1.0),
    "clip_qkv": (None, 0, 0.0),
    "qk_layernorm": (None, False),
    "residual_mlp": (None, False),
    "moe_num_experts": (None, 0),
    "num_experts": (None, 0),
}

# hidden_act -> (function, gated). "gelu"/"geglu" become "gelu_erf" under gelu_approximate "none".
ACTIVATIONS: dict[str, tuple[str, bool]] = {
    "relu": ("relu", False),
    "silu": ("silu", False),
    "swish": ("silu", False),
    "swiglu": ("silu", True),
    "fast-swiglu": ("silu", True),
    "gelu": ("gelu_tanh", False),
    "geglu": ("gelu_tanh", True),
    "gelu_new": ("gelu_tanh", False),
    "gelu_fast": ("gelu_tanh", False),
    "gelu_pytorch_tanh": ("gelu_tanh", False),
    "openai-gelu": ("gelu_tanh", False),
}
EXACT_GELU_NAMES = ("gelu", "geglu")  # the names gelu_approximate "none" turns exact
GELU_APPROXIMATIONS = ("tanh", "none")


def activation_of(hidden_act: str, gelu_approximate: str | None) -> str:
    """The function ``hidden_act`` computes: relu, silu, gelu_tanh, gelu_erf (an unknown name as it is)."""
    function = ACTIVATIONS.get(hidden_act, (hidden_act, False))[0]
    if hidden_act in EXACT_GELU_NAMES and gelu_approximate == "none":
        return "gelu_erf"
    return function


def read_field(extra: dict, key: str) -> Any:
    """The value of declared field ``key`` in ``extra`` (or of its first present alias); None when absent/null."""
    for name in (key, *MODEL_FIELDS[key].aliases):
        if extra.get(name) is not None:
            return extra[name]
    return None


def field_problems(extra: dict, hidden_act: str) -> list[str]:
    """Type problems of the declared fields present in ``extra`` (domains are checked by ``config``)."""
    out = []
    for f in MODEL_FIELDS.values():
        for name in (f.key, *f.aliases):
            value = extra.get(name)
            if value is None:
                continue
            ok = isinstance(value, f.types) and not (isinstance(value, bool) and bool not in f.types)
            if not ok:
                wanted = " or ".join(
                    {"int": "integer", "float": "number", "bool": "boolean", "dict": "object", "str": "string"}[
                        t.__name__
                    ]
                    for t in f.types
                )
                out.append(f"{name}: must be {wanted} or null, got {value!r}")
    approx = extra.get("gelu_approximate")
    if isinstance(approx, str):
        if approx not in GELU_APPROXIMATIONS:
            out.append(f"gelu_approximate: must be one of {list(GELU_APPROXIMATIONS)}, got {approx!r}")
        elif (
            approx == "none"
            and ACTIVATIONS.get(hidden_act, ("", False))[0] == "gelu_tanh"
            and (hidden_act not in EXACT_GELU_NAMES)
        ):
            out.append(f"gelu_approximate: 'none' contradicts hidden_act {hidden_act!r}, a tanh approximation")
    return out


# --- ALiBi slopes ---------------------------------------------------------------------------------
# Families whose ALiBi bias is scaled by 1/sqrt(head_size) like q.k even when the config says plain "alibi"
# (Falcon; TensorRT-LLM's Falcon model switches to alibi_with_scale itself). "alibi_with_scale" always is.
ALIBI_SCALED_FAMILIES = frozenset({"falcon"})


def alibi_slopes(spec: ModelSpec) -> np.ndarray:
    """float32 ``[num_heads]`` ALiBi slopes (Press et al.): a geometric sequence for the largest power of two
    <= heads, then odd powers of the next one for the other heads; divided by sqrt(head_size) where the bias is
    scaled (``alibi_with_scale``, ``ALIBI_SCALED_FAMILIES``). Every executor takes its slopes from here (a tp
    rank those of its heads); the bias of a key is slope x its position, rounded to the model dtype."""
    import numpy as np  # here: parsing a config needs no numpy

    heads = spec.num_heads
    closest = 2 ** math.floor(math.log2(heads))
    base = np.float32(2.0 ** (-(2.0 ** -(math.log2(closest) - 3))))
    slopes = np.power(base, np.arange(1, closest + 1, dtype=np.float32), dtype=np.float32)
    if closest != heads:
        extra = np.float32(2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3))))
        odd = np.arange(1, 1 + 2 * (heads - closest), 2, dtype=np.float32)
        slopes = np.concatenate([slopes, np.power(extra, odd, dtype=np.float32)])
    if spec.position_embedding_type == "alibi_with_scale" or spec.family in ALIBI_SCALED_FAMILIES:
        slopes = slopes / np.float32(math.sqrt(spec.head_size))
    return slopes.astype(np.float32)


# --- rotary frequencies ---------------------------------------------------------------------------
ROTARY_SCALING_TYPES = ("linear", "llama3")


def rotary_scaling_type(scaling: dict | None) -> str:
    """'none', 'linear', 'llama3' or the unknown type named (dynamic, yarn, longrope, ...)."""
    if not scaling:
        return "none"
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    return "none" if kind == "default" else str(kind)


def rotary_inv_freq(rotary_dim: int, base: float, scaling: dict | None) -> np.ndarray:
    """float32 ``[rotary_dim / 2]`` inverse frequencies, scaled as ``rotary_scaling`` says (linear, llama3).

    Every executor takes its rotary angles from here (positions x these)."""
    import numpy as np  # here: parsing a config needs no numpy

    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(base), exponents, dtype=np.float32)).astype(np.float32)
    kind = rotary_scaling_type(scaling)
    if kind == "none":
        return inv_freq
    assert scaling is not None
    factor = np.float32(scaling.get("factor", 1.0))
    if kind == "linear":
        return (inv_freq / factor).astype(np.float32)
    if kind == "llama3":
        low = np.float32(scaling.get("low_freq_factor", 1.0))
        high = np.float32(scaling.get("high_freq_factor", 4.0))
        old_len = np.float32(scaling.get("original_max_position_embeddings", 8192))
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq).astype(np.float32)
        smooth = ((old_len / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise CheckpointError(f"config.json: rotary_scaling: type {kind!r} is not computed by any executor")


# --- the support table ----------------------------------------------------------------------------
TORCH, FUSED, BUILDER = "torch", "fused", "builder"
EXECUTORS: dict[str, str] = {
    TORCH: "the torch backend (ckpt-run --backend torch)",
    FUSED: "the fused decode kernels (--compile)",
    BUILDER: "ckpt-build",
}
ALL = frozenset(EXECUTORS)


@dataclass(frozen=True)
class Feature:
    """One math feature: the config field that sets it, how a spec's value reads, who computes which value.

    A value not in ``support`` is computed by ``other`` (a number the config sets: any window, any cap)."""

    field: str
    value: Callable[[ModelSpec], str]
    support: dict[str, frozenset[str]]
    other: frozenset[str] = frozenset()


def _bool(x: object) -> str:
    return "true" if x else "false"


def _number(x: float | None) -> str:
    return "none" if x is None else f"{x:g}"


def _window(s: ModelSpec) -> str:
    if s.sliding_window is None:
        return "none"
    pattern = s.sliding_window_pattern
    return f"{s.sliding_window} positions" + (f", 1 global layer in {pattern}" if pattern else "")


FEATURES: tuple[Feature, ...] = (
    Feature(
        "hidden_act",
        lambda s: s.activation + (" (gated)" if s.gated_mlp else ""),
        {f"{fn}{gated}": ALL for fn in ("relu", "silu", "gelu_tanh", "gelu_erf") for gated in ("", " (gated)")},
    ),
    Feature("norm", lambda s: s.norm, {"rmsnorm": ALL, "layernorm": ALL}),
    Feature("do_layer_norm_before", lambda s: _bool(s.pre_norm), {"true": ALL, "false": ALL}),
    Feature("parallel residual", lambda s: _bool(s.parallel_residual), {"false": ALL, "true": ALL}),
    Feature(
        "mlp norm",
        lambda s: "own" if s.mlp_norm else "shared with attention",
        {"own": ALL, "shared with attention": ALL},
    ),
    Feature(
        "position_embedding_type",
        lambda s: s.position_embedding_type,
        {
            "learned_absolute": ALL,
            "rope_gpt_neox": ALL,
            "rope_gptj": ALL,
            "alibi": ALL,
            "alibi_with_scale": ALL,
        },
    ),
    Feature(
        "rotary_scaling", lambda s: rotary_scaling_type(s.rotary_scaling), {"none": ALL, "linear": ALL, "llama3": ALL}
    ),
    Feature("sliding_window", _window, {"none": ALL}, ALL),
    Feature("rope_local_base_freq", lambda s: _number(s.rotary_base_local), {"none": ALL}, ALL),
    Feature(
        "embedding scale",
        lambda s: "none" if s.embedding_scale == 1 else "sqrt(hidden_size)",
        {"none": ALL, "sqrt(hidden_size)": ALL},
    ),
    Feature("inter_layernorms", lambda s: _bool(s.attn_out_norm), {"false": ALL, "true": ALL}),
    Feature("qk norm", lambda s: _bool(s.qk_norm), {"false": ALL, "true": ALL}),
    Feature("query_pre_attn_scalar", lambda s: _number(s.query_pre_attn_scalar), {"none": ALL}, ALL),
    Feature("attn_logit_softcapping", lambda s: _number(s.attn_logit_softcapping), {"none": ALL}, ALL),
    Feature("final_logit_softcapping", lambda s: _number(s.final_logit_softcapping), {"none": ALL}, ALL),
    Feature(
        "word_embed_proj_dim",
        lambda s: "none" if s.embed_proj_dim is None else "projected",
        {"none": ALL, "projected": ALL},
    ),
    # ModelOpt's FP8 / INT8 SmoothQuant / INT4 AWQ: emulated by the torch backend (ckpt_eval.quantized); the fused
    # kernels read FP8 / int8 codes and quantize their inputs the same way, and read INT4 AWQ's packed codes with
    # its group scales, the pre-quant scale on the input (decode_wq_kernels); weight-only: WEIGHT_ONLY_SUPPORTED
    Feature(
        "quantization",
        lambda s: s.quantization,
        {
            # ckpt-build: TensorRT Q/DQ layers with the checkpoint's per-tensor activation scale; a per-token
            # (dynamic, per-row) int8 scale is no IQuantizeLayer input, so it rounds with elementwise layers
            **{m: ALL for m in ("FP8", "W8A8_SQ_PER_CHANNEL", "W8A8_SQ_PER_TENSOR_PLUGIN")},
            "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN": ALL,
            "W4A16_AWQ with pre-quant scales": ALL,  # ckpt-build: weight-only int4 blocks, x * pre-quant scale
        },
    ),
    Feature(
        "kv_cache_quant_algo",
        lambda s: s.kv_cache_quantization,
        {"none": ALL, "INT8": ALL, "FP8": ALL},
    ),
    Feature("use_prompt_tuning", lambda s: _bool(s.prompt_tuning), {"false": ALL, "true": frozenset({TORCH, FUSED})}),
    Feature("unimplemented fields", lambda s: ", ".join(s.unimplemented) or "none", {"none": ALL}),
)
# weight-only modes (the torch backend dequantizes them at load; the fused kernels read the packed int8 / int4
# codes with their per-channel or per-group scales, decode_wq_kernels)
WEIGHT_ONLY_SUPPORTED = ("none", "W8A16", "W4A16", "W8A16_GPTQ", "W4A16_GPTQ", "W4A16_AWQ", "W8A16_AWQ")


def _supporters(feature: Feature, value: str) -> frozenset[str]:
    if feature.field == "quantization":
        return ALL if value in WEIGHT_ONLY_SUPPORTED else feature.support.get(value, frozenset())
    return feature.support.get(value, feature.other)


def support_rows(spec: ModelSpec) -> list[tuple[str, str, list[str]]]:
    """(field, value, executors computing it) for every feature of ``spec``: the table row of a checkpoint."""
    rows = []
    for feature in FEATURES:
        value = feature.value(spec)
        rows.append((feature.field, value, sorted(_supporters(feature, value))))
    return rows


def unsupported_by(spec: ModelSpec, executor: str) -> list[str]:
    """One line per feature of ``spec`` that ``executor`` does not compute (empty: it computes the model)."""
    out = []
    for field_name, value, who in support_rows(spec):
        if executor not in who:
            others = ", ".join(EXECUTORS[e] for e in who) or "no executor yet"
            out.append(
                f"config.json: {field_name} {value!r} is not supported by {EXECUTORS[executor]} "
                f"(supported by: {others})"
            )
    return out


def check_support(spec: ModelSpec, executor: str) -> None:
    """Raise one ``CheckpointError`` line for the first feature ``executor`` does not compute."""
    problems = unsupported_by(spec, executor)
    if problems:
        raise CheckpointError(problems[0], problems)
