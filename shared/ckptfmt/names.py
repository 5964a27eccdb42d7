"""Tensor names and per-rank shapes for every supported architecture.

The architectures differ only in table entries (``FAMILIES``): norm kind, MLP gating, biases, positions,
residual wiring, per-layer norm names (Gemma 2/3 add norms on the attention and MLP outputs, Gemma 3 q/k
norms), and Gemma's embedding scale. ``model_spec(config)`` resolves a config into a ``ModelSpec``
used alike by validation, converters, the builder and the runtime; ``expected_tensors(config, rank)``
lists what a rank file must hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import CheckpointConfig
from .constants import ARCHITECTURES
from .semantics import ACTIVATIONS, UNIMPLEMENTED_FIELDS, activation_of, read_field

# --- canonical templates ---------------------------------------------------------------------------
VOCAB_EMBEDDING = "transformer.vocab_embedding.weight"
POSITION_EMBEDDING = "transformer.position_embedding.weight"
PROJECT_IN = "transformer.project_in.weight"  # OPT word_embed_proj_dim != hidden_size
PROJECT_OUT = "transformer.project_out.weight"
LN_F = "transformer.ln_f"
LM_HEAD = "lm_head.weight"
LAYER = "transformer.layers.{i}."

QKV, DENSE, FC, GATE, PROJ = "attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"
Q_NORM, K_NORM = "attention.q_layernorm", "attention.k_layernorm"  # per-head RMSNorm [head_size], replicated
COLUMN_LINEARS = (QKV, FC, GATE)  # split on dim 0 (output rows)
ROW_LINEARS = (DENSE, PROJ)  # split on dim 1 (input columns); bias added once after the all-reduce


@dataclass(frozen=True)
class Family:
    """What one architecture family looks like (defaults; config fields may override some)."""

    norm: str  # "layernorm" | "rmsnorm"
    gated_mlp: bool
    bias: bool  # biases on qkv/dense/fc/proj
    qkv_bias: bool  # bias on qkv only (Qwen2)
    attn_norm: str  # per-layer norm before attention
    mlp_norm: str | None  # per-layer norm before the MLP; None: the MLP reads the attention norm's output
    parallel_residual: bool  # x + attn(n1(x)) + mlp(n2(x))
    attn_out_norm: str | None = None  # norm on the attention output, before the residual add (Gemma 2/3)
    mlp_out_norm: str | None = None  # norm on the MLP output, before the residual add (Gemma 2/3)
    qk_norm: bool = False  # q and k RMS-normed per head before the rotary embedding (Gemma 3)
    scaled_embedding: bool = False  # embedding x sqrt(hidden_size) (Gemma)


FAMILIES: dict[str, Family] = {
    "gpt": Family("layernorm", False, True, True, "input_layernorm", "post_layernorm", False),
    "opt": Family("layernorm", False, True, True, "input_layernorm", "post_layernorm", False),
    "llama": Family("rmsnorm", True, False, False, "input_layernorm", "post_layernorm", False),
    "qwen2": Family("rmsnorm", True, False, True, "input_layernorm", "post_layernorm", False),
    "gptneox": Family("layernorm", False, True, True, "input_layernorm", "post_attention_layernorm", True),
    "falcon": Family("layernorm", False, False, False, "input_layernorm", "post_layernorm", False),
    # TensorRT-LLM's Gemma names: post_layernorm is the MLP's norm in Gemma 1, the attention output's in 2/3
    "gemma": Family("rmsnorm", True, False, False, "input_layernorm", "post_layernorm", False, scaled_embedding=True),
    **{
        name: Family(
            "rmsnorm",
            True,
            False,
            False,
            "input_layernorm",
            "pre_feedforward_layernorm",
            False,
            attn_out_norm="post_layernorm",
            mlp_out_norm="post_feedforward_layernorm",
            qk_norm=name == "gemma3",
            scaled_embedding=True,
        )
        for name in ("gemma2", "gemma3")
    },
}

SUPPORTED_ARCHITECTURES = frozenset(ARCHITECTURES)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to lay out or run a decoder, resolved from a config."""

    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None
    norm: str
    norm_epsilon: float
    norm_bias: bool
    hidden_act: str  # as written; ``activation`` is what it computes
    activation: str  # relu | silu | gelu_tanh | gelu_erf (semantics.ACTIVATIONS), or an unknown name as written
    gated_mlp: bool
    bias: bool
    qkv_bias: bool
    attn_norm: str
    mlp_norm: str | None
    parallel_residual: bool
    pre_norm: bool  # False: OPT post-norm (do_layer_norm_before false)
    has_ln_f: bool
    position_embedding_type: str
    rotary_dim: int  # 0 when there is no rotary embedding
    rotary_base: float
    rotary_scaling: dict | None
    embed_proj_dim: int | None  # OPT projection dims
    lm_head_bias: bool
    sliding_window: int | None = None  # attention sees the last N positions only (Mistral, Qwen2 use_sliding_window)
    sliding_window_pattern: int | None = None  # layer i is global when (i + 1) % N == 0; None: every layer local
    rotary_base_local: float | None = None  # the local layers' rotary base, unscaled (Gemma 3)
    attn_out_norm: str | None = None
    mlp_out_norm: str | None = None
    qk_norm: bool = False
    embedding_scale: float = 1.0  # the embedding's multiplier (Gemma: sqrt(hidden_size))
    query_pre_attn_scalar: float | None = None  # scores scaled by 1/sqrt(this); None: by 1/sqrt(head_size)
    attn_logit_softcapping: float | None = None  # scores = cap * tanh(scores / cap)
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)
    quantization: str = "none"  # quant_algo, qualified by zero points / pre-quant scales
    kv_cache_quantization: str = "none"
    prompt_tuning: bool = False
    unimplemented: tuple[str, ...] = ()  # "field=value" of set fields no executor computes (semantics)

    @property
    def learned_positions(self) -> bool:
        return self.position_embedding_type == "learned_absolute"

    @property
    def rotary(self) -> bool:
        return self.position_embedding_type.startswith("rope")

    @property
    def rotary_interleaved(self) -> bool:
        return self.position_embedding_type == "rope_gptj"

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_size

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_size

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_size) ** -0.5

    def local_layer(self, layer: int) -> bool:
        """Whether global layer index ``layer`` attends through the sliding window (and the local rotary base)."""
        if self.sliding_window is None:
            return False
        return self.sliding_window_pattern is None or (layer + 1) % self.sliding_window_pattern != 0

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if self.local_layer(layer) else None

    def layer_rotary(self, layer: int) -> tuple[float, dict | None]:
        """(base, scaling) of the rotary embedding of global layer ``layer``."""
        if self.rotary_base_local is not None and self.local_layer(layer):
            return self.rotary_base_local, None
        return self.rotary_base, self.rotary_scaling

    @property
    def embed_dim(self) -> int:
        """Width of the vocab embedding and lm_head (OPT-350m: 512, not hidden_size)."""
        return self.embed_proj_dim or self.hidden_size


def family_of(config: CheckpointConfig) -> str:
    try:
        return ARCHITECTURES[config.architecture]
    except KeyError:
        raise ValueError(
            f"architecture: unsupported {config.architecture!r} (supported: {', '.join(sorted(ARCHITECTURES))})"
        ) from None


def _rotary_dim(config: CheckpointConfig, head_size: int) -> int:
    if not config.position_embedding_type.startswith("rope"):
        return 0
    if read_field(config.extra, "rotary_dim"):
        return int(read_field(config.extra, "rotary_dim"))
    pct = read_field(config.extra, "rotary_pct")
    return int(head_size * (1.0 if pct is None else pct)) // 2 * 2


def _flag(config: CheckpointConfig, key: str, default: bool) -> bool:
    value = read_field(config.extra, key)
    return default if value is None else bool(value)


def _cap(config: CheckpointConfig, key: str) -> float | None:
    value = read_field(config.extra, key)
    return float(value) if value else None  # null or 0: no cap


def _quantization(config: CheckpointConfig) -> str:
    q = config.quantization
    mode = q.quant_algo or "none"
    if q.extra.get("has_zero_point"):
        mode += " with zero points"
    if q.extra.get("pre_quant_scale"):
        mode += " with pre-quant scales"
    return mode


def model_spec(config: CheckpointConfig) -> ModelSpec:
    """Resolve a (valid) config into the decoder layout it describes: the one reader of the math fields
    (``semantics.MODEL_FIELDS``)."""
    fam_name = family_of(config)
    fam = FAMILIES[fam_name]
    head_size = config.head_size
    bias = _flag(config, "bias", fam.bias)
    qkv_bias = _flag(config, "qkv_bias", bias or fam.qkv_bias)
    attn_norm, mlp_norm, parallel = fam.attn_norm, fam.mlp_norm, fam.parallel_residual
    if fam_name == "falcon":
        if _flag(config, "new_decoder_architecture", False):
            mlp_norm, parallel = "mlp_layernorm", True
        elif _flag(config, "parallel_attention", True):
            mlp_norm, parallel = None, True
    if fam_name == "gptneox":
        parallel = _flag(config, "use_parallel_residual", True)
    pre_norm = _flag(config, "do_layer_norm_before", True)
    proj = read_field(config.extra, "word_embed_proj_dim")
    base = read_field(config.extra, "rotary_base")
    window = read_field(config.extra, "sliding_window")
    qpas = read_field(config.extra, "query_pre_attn_scalar")
    local_base = read_field(config.extra, "rope_local_base_freq")
    unimplemented = tuple(
        f"{key}={config.extra[key]!r}"
        for key, neutral in UNIMPLEMENTED_FIELDS.items()
        if key in config.extra and config.extra[key] not in neutral
    )
    return ModelSpec(
        family=fam_name,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.kv_heads,
        head_size=head_size,
        intermediate_size=config.ffn_size,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        norm=fam.norm,
        norm_epsilon=config.norm_epsilon,
        norm_bias=fam.norm == "layernorm",
        hidden_act=config.hidden_act,
        activation=activation_of(config.hidden_act, read_field(config.extra, "gelu_approximate")),
        gated_mlp=fam.gated_mlp or ACTIVATIONS.get(config.hidden_act, ("", False))[1],
        bias=bias,
        qkv_bias=qkv_bias,
        attn_norm=attn_norm,
        mlp_norm=mlp_norm,
        parallel_residual=parallel,
        pre_norm=pre_norm,
        has_ln_f=pre_norm,
        position_embedding_type=config.position_embedding_type,
        rotary_dim=_rotary_dim(config, head_size),
        rotary_base=float(10000.0 if base is None else base),
        rotary_scaling=read_field(config.extra, "rotary_scaling"),
        embed_proj_dim=proj if proj and proj != config.hidden_size else None,
        lm_head_bias=_flag(config, "lm_head_bias", False),
        sliding_window=int(window) if window and _flag(config, "use_sliding_window", True) else None,
        sliding_window_pattern=read_field(config.extra, "_sliding_window_pattern"),
        rotary_base_local=None if local_base is None else float(local_base),
        attn_out_norm=fam.attn_out_norm,
        mlp_out_norm=fam.mlp_out_norm,
        qk_norm=fam.qk_norm,
        embedding_scale=math.sqrt(config.hidden_size) if fam.scaled_embedding else 1.0,
        query_pre_attn_scalar=None if qpas is None or qpas == head_size else float(qpas),
        attn_logit_softcapping=_cap(config, "attn_logit_softcapping"),
        final_logit_softcapping=_cap(config, "final_logit_softcapping"),
        quantization=_quantization(config),
        kv_cache_quantization=config.quantization.kv_cache_quant_algo or "none",
        prompt_tuning=config.use_prompt_tuning,
        unimplemented=unimplemented,
    )


@dataclass(frozen=True)
class TensorSpec:
    """Expected shape and dtype name (``float16``, ``int8``, ...) of one tensor in one rank file."""

    shape: tuple[int, ...]
    dtype: str
    optional: bool = False  # may be absent (ModelOpt's separate k/v cache scales beside the merged one)


def pad_to_multiple(n: int, k: int) -> int:
    return -(-n // k) * k


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """KV heads held by each rank: split when tp divides them, else one (replicated) head per rank."""
    return max(num_kv_heads // tp_size, 1)


def layer_linears(spec: ModelSpec, tp: int) -> dict[str, tuple[int, int, bool]]:
    """Per-rank (out, in, has_bias) of each linear in a layer."""
    q = spec.num_heads // tp * spec.head_size
    kv = kv_heads_per_rank(spec.num_kv_heads, tp) * spec.head_size
    ffn = spec.intermediate_size // tp
    out = {
        QKV: (q + 2 * kv, spec.hidden_size, spec.qkv_bias),
        DENSE: (spec.hidden_size, q, spec.bias),
        FC: (ffn, spec.hidden_size, spec.bias),
    }
    if spec.gated_mlp:  # right after fc: fc and gate weights end up back to back in rank files (see below)
        out[GATE] = (ffn, spec.hidden_size, spec.bias)
    out[PROJ] = (spec.hidden_size, ffn, spec.bias)
    return out


def layer_norms(spec: ModelSpec) -> list[str]:
    """The per-layer norms over hidden_size, in file order."""
    return [n for n in (spec.attn_norm, spec.attn_out_norm, spec.mlp_norm, spec.mlp_out_norm) if n]


def expected_tensors(config: CheckpointConfig, rank: int) -> dict[str, TensorSpec]:
    """Every tensor rank ``rank`` must hold, with its per-rank shape and dtype, in the order writers lay them
    out: per layer norms, linear weights, then biases, so a gated MLP's fc and gate weights are adjacent (the
    builder hands them to TensorRT as one matrix without copying)."""
    spec = model_spec(config)
    m = config.mapping
    tp, (_, pp_rank) = m.tp_size, m.coords(rank)
    dt = config.dtype
    out: dict[str, TensorSpec] = {}

    def norm(prefix: str, width: int) -> None:
        out[f"{prefix}.weight"] = TensorSpec((width,), dt)
        if spec.norm_bias:
            out[f"{prefix}.bias"] = TensorSpec((width,), dt)

    def embedding(name: str, rows: int, width: int) -> None:
        if config.use_parallel_embedding and tp > 1:
            if config.embedding_sharding_dim == 0:
                rows = pad_to_multiple(rows, tp) // tp
            else:
                width //= tp
        out[name] = TensorSpec((rows, width), dt)

    if m.is_first_stage(rank):
        embedding(VOCAB_EMBEDDING, spec.vocab_size, spec.embed_dim)
        if spec.learned_positions:
            embedding(POSITION_EMBEDDING, spec.max_position_embeddings or 0, spec.hidden_size)
        if spec.embed_proj_dim:
            out[PROJECT_IN] = TensorSpec((spec.hidden_size, spec.embed_proj_dim), dt)
    quant = config.quantization
    for local, _ in enumerate(m.pp_layers(spec.num_layers, pp_rank)):
        prefix = LAYER.format(i=local)
        for n in layer_norms(spec):
            norm(prefix + n, spec.hidden_size)
        if spec.qk_norm:
            for n in (Q_NORM, K_NORM):
                norm(prefix + n, spec.head_size)
        biases = {}  # after the weights, so that a gated MLP's fc and gate weights are adjacent in the file
        scales: dict[str, TensorSpec] = {}  # ModelOpt's scaling factors: after the biases, for the same reason
        for name, (rows, cols, has_bias) in layer_linears(spec, tp).items():
            for tensor, tspec in linear_tensors(prefix + name, rows, cols, dt, quant).items():
                modelopt_scale = quant.scheme in MODELOPT_SCHEMES and not tensor.endswith(".weight")
                (scales if modelopt_scale else out)[tensor] = tspec
            if has_bias:
                biases[f"{prefix}{name}.bias"] = TensorSpec((rows if name in COLUMN_LINEARS else spec.hidden_size,), dt)
        out.update(biases)
        out.update(scales)
        if quant.kv_cache:
            out.update(kv_cache_tensors(prefix + "attention"))
    if m.is_last_stage(rank):
        if spec.has_ln_f:
            norm(LN_F, spec.hidden_size)
        if spec.embed_proj_dim:
            out[PROJECT_OUT] = TensorSpec((spec.embed_proj_dim, spec.hidden_size), dt)
        if not (config.share_embedding_table and m.pp_size == 1):
            out[LM_HEAD] = TensorSpec((pad_to_multiple(spec.vocab_size, tp) // tp, spec.embed_dim), dt)
        if spec.lm_head_bias:
            out["lm_head.bias"] = TensorSpec((pad_to_multiple(spec.vocab_size, tp) // tp,), dt)
    return out


# scaling-factor tensor suffixes (ModelOpt's ``LinearConfig`` / ``AttentionConfig`` field names)
WEIGHTS_SCALE = "weights_scaling_factor"
ACTIVATION_SCALE = "activation_scaling_factor"
PREQUANT_SCALE = "prequant_scaling_factor"
PER_CHANNEL_SCALE = "per_channel_scale"
KV_CACHE_SCALE = "kv_cache_scaling_factor"
KV_CACHE_SCALES = ("k_cache_scaling_factor", KV_CACHE_SCALE, "v_cache_scaling_factor")
LINEAR_SCALES = (WEIGHTS_SCALE, ACTIVATION_SCALE, PREQUANT_SCALE)
SCALE_DTYPE = "float32"  # every scaling factor but the pre-quant one (model dtype) and ours (per_channel_scale)
MODELOPT_SCHEMES = ("fp8", "int8_sq", "int4_awq")


def kv_cache_tensors(attention: str) -> dict[str, TensorSpec]:
    """KV-cache scales of one attention (INT8 or FP8 cache), float32 ``[1]`` each: ModelOpt writes the separate
    ``k_cache_scaling_factor`` / ``v_cache_scaling_factor`` (optional here) and their maximum
    ``kv_cache_scaling_factor``, the one TensorRT-LLM reads."""
    return {f"{attention}.{n}": TensorSpec((1,), SCALE_DTYPE, optional=n != KV_CACHE_SCALE) for n in KV_CACHE_SCALES}


def linear_tensors(name: str, rows: int, cols: int, dtype: str, quant) -> dict[str, TensorSpec]:
    """The tensors of one linear weight (``rows`` x ``cols`` = per-rank out x in): plain ``[out, in]``,
    weight-only quantized (ours), or quantized as ModelOpt's TensorRT-LLM export lays it out.

    Weight-only layout (ours, documented in docs/checkpoint-format.md): ``weight`` int8 ``[in, out]``
    (int4: two values per byte along ``out``, element 2j in the low nibble, so ``[in, out/2]``) and
    ``per_channel_scale`` ``[out]`` (per group: ``[in/group_size, out]``) in the model dtype.

    ModelOpt layouts (``quant.scheme``), scaling factors float32 but the pre-quant one (model dtype):
    FP8 ``weight`` float8_e4m3fn ``[out, in]``, ``weights_scaling_factor`` and ``activation_scaling_factor`` ``[1]``;
    INT8 SmoothQuant ``weight`` int8 ``[out, in]``, ``weights_scaling_factor`` ``[out]`` (per tensor: ``[1]``),
    ``activation_scaling_factor`` ``[1]``, ``prequant_scaling_factor`` ``[in]``; INT4 AWQ ``weight`` int8
    ``[out/2, in]`` (two values a byte along ``out``, element 2j in the low nibble), ``weights_scaling_factor``
    ``[out, in/group_size]``, ``prequant_scaling_factor`` ``[in]``.
    """
    scheme = quant.scheme
    if scheme == "none":
        return {f"{name}.weight": TensorSpec((rows, cols), dtype)}
    if scheme == "fp8":
        return {
            f"{name}.weight": TensorSpec((rows, cols), "float8_e4m3fn"),
            f"{name}.{ACTIVATION_SCALE}": TensorSpec((1,), SCALE_DTYPE),
            f"{name}.{WEIGHTS_SCALE}": TensorSpec((1,), SCALE_DTYPE),
        }
    if scheme == "int8_sq":
        return {
            f"{name}.weight": TensorSpec((rows, cols), "int8"),
            f"{name}.{ACTIVATION_SCALE}": TensorSpec((1,), SCALE_DTYPE),
            f"{name}.{WEIGHTS_SCALE}": TensorSpec((rows,) if quant.per_channel else (1,), SCALE_DTYPE),
            f"{name}.{PREQUANT_SCALE}": TensorSpec((cols,), dtype),
        }
    if scheme == "int4_awq":
        return {
            f"{name}.weight": TensorSpec((rows // 2, cols), "int8"),
            f"{name}.{WEIGHTS_SCALE}": TensorSpec((rows, cols // quant.group_size), SCALE_DTYPE),
            f"{name}.{PREQUANT_SCALE}": TensorSpec((cols,), dtype),
        }
    packed = rows // 2 if quant.weight_only_precision == "int4" else rows
    scale_shape = (cols // quant.group_size, rows) if quant.per_group else (rows,)
    return {
        f"{name}.weight": TensorSpec((cols, packed), "int8"),
        f"{name}.per_channel_scale": TensorSpec(scale_shape, dtype),
    }


def weight_only_layout_problems(config: CheckpointConfig) -> list[str]:
    """Weight-only layouts this mapping cannot hold: a group size that does not divide a per-rank input size,
    or an odd per-rank output size for packed int4 (two values per byte)."""
    quant = config.quantization
    if quant.scheme not in ("weight_only", "int4_awq"):
        return []
    spec, tp = model_spec(config), config.mapping.tp_size
    problems = []
    for name, (rows, cols, _) in layer_linears(spec, tp).items():
        if quant.per_group and cols % quant.group_size:
            problems.append(
                f"quantization.group_size: {quant.group_size} does not divide the per-rank input size {cols} of "
                f"{name} at tp_size {tp}"
            )
        if quant.weight_only_precision == "int4" and rows % 2:
            problems.append(f"quantization: int4 packs two values a byte; {name}'s per-rank output size {rows} is odd")
    return problems
