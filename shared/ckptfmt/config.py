"""The checkpoint config schema: every field and default once, typed, with unknown fields kept.

``CheckpointConfig.from_dict`` never raises on a bad value; ``problems()`` lists every issue with its field
path, and ``load_config`` raises one ``CheckpointError`` carrying them all.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .constants import ARCHITECTURES, CONFIG_FILE, DTYPES, KV_CACHE_ALGOS, WEIGHT_ONLY_ALGOS
from .errors import CheckpointError
from .jsonfile import read_json_file
from .kinds import CHECKPOINT, wrong_kind_message
from .mapping import Mapping
from .semantics import field_problems

MANDATORY = object()  # marker default for mandatory fields

# name -> (types, default); ``None`` in types means the field may be null.
TOP_FIELDS: dict[str, tuple[tuple, Any]] = {
    "architecture": ((str,), MANDATORY),
    "dtype": ((str,), MANDATORY),
    "logits_dtype": ((str,), "float32"),
    "vocab_size": ((int,), MANDATORY),
    "max_position_embeddings": ((int, None), None),
    "hidden_size": ((int,), MANDATORY),
    "num_hidden_layers": ((int,), MANDATORY),
    "num_attention_heads": ((int,), MANDATORY),
    "num_key_value_heads": ((int, None), None),  # None -> num_attention_heads
    "hidden_act": ((str,), MANDATORY),
    "intermediate_size": ((int, None), None),  # None -> 4 * hidden_size where the model needs it
    "norm_epsilon": ((float,), 1e-5),
    "position_embedding_type": ((str,), "learned_absolute"),
    "use_prompt_tuning": ((bool,), False),
    "use_parallel_embedding": ((bool,), False),
    "embedding_sharding_dim": ((int,), 0),
    "share_embedding_table": ((bool,), False),
}
MAPPING_FIELDS: dict[str, tuple[tuple, Any]] = {
    "world_size": ((int,), 1),
    "tp_size": ((int,), 1),
    "pp_size": ((int,), 1),
}
QUANT_FLAG_FIELDS: dict[str, tuple[tuple, Any]] = {
    "use_smooth_quant": ((bool,), False),
    "per_channel": ((bool,), False),
    "per_token": ((bool,), False),
    "per_group": ((bool,), False),
    "group_size": ((int,), 64),
    "int8_kv_cache": ((bool,), False),
    "enable_fp8": ((bool,), False),
    "fp8_kv_cache": ((bool,), False),
    "use_weight_only": ((bool,), False),
    "weight_only_precision": ((str,), "int8"),
}
# Domains of the numeric fields: (integral, lowest, highest). The bounds keep a hostile config.json from
# planning a billion layers; they lie far beyond any published model (405B: 126 layers, 16384 hidden, 256k vocab).
MAX_LAYERS = 4096
NUMERIC_DOMAINS: dict[str, tuple[bool, float, float]] = {
    "vocab_size": (True, 1, 1 << 24),
    "hidden_size": (True, 1, 1 << 20),
    "num_hidden_layers": (True, 1, MAX_LAYERS),
    "num_attention_heads": (True, 1, 1 << 14),
    "num_key_value_heads": (True, 1, 1 << 14),
    "intermediate_size": (True, 1, 1 << 22),
    "max_position_embeddings": (True, 1, 1 << 26),
    "norm_epsilon": (False, 1e-30, 1.0),
    # model-specific fields, read from ``extra`` when present (null means "not set")
    "head_size": (True, 1, 1 << 14),
    "rotary_dim": (True, 0, 1 << 14),
    "rotary_pct": (False, 0.0, 1.0),
    "rotary_base": (False, 1e-6, 1e30),
    "rotary_emb_base": (False, 1e-6, 1e30),
    "sliding_window": (True, 1, 1 << 26),
    "word_embed_proj_dim": (True, 1, 1 << 20),
    "_sliding_window_pattern": (True, 1, MAX_LAYERS),
    "sliding_window_pattern": (True, 1, MAX_LAYERS),
    "rope_local_base_freq": (False, 1e-6, 1e30),
    "query_pre_attn_scalar": (False, 1e-6, 1e30),
    "attn_logit_softcapping": (False, 0.0, 1e30),  # 0: off
    "final_logit_softcapping": (False, 0.0, 1e30),
}
ROTARY_SCALING_DOMAINS: dict[str, tuple[bool, float, float]] = {
    "factor": (False, 1e-6, 1e6),
    "low_freq_factor": (False, 1e-6, 1e6),
    "high_freq_factor": (False, 1e-6, 1e6),
    "original_max_position_embeddings": (True, 1, 1 << 26),
}
POSITION_EMBEDDING_TYPES = ("learned_absolute", "rope_gpt_neox", "rope_gptj", "alibi", "alibi_with_scale")
WEIGHT_ONLY_PRECISIONS = ("int8", "int4")
# usual spelling -> canonical dtype name (the one written into config.json); "auto" is kept for CLI defaults
DTYPE_SPELLINGS: dict[str, str] = {
    **dict.fromkeys(("float32", "fp32", "float", "f32"), "float32"),
    **dict.fromkeys(("float16", "fp16", "half", "f16"), "float16"),
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    "auto": "auto",
}


def canonical_dtype(name: str) -> str:
    """``float32``/``float16``/``bfloat16`` (or ``auto``) for a usual spelling: fp16, half, bf16, torch.float32, ...

    Raises ``CheckpointError`` naming the accepted spellings.
    """
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_SPELLINGS:
        raise CheckpointError(f"dtype {name!r}: not one of {', '.join(DTYPE_SPELLINGS)}")
    return DTYPE_SPELLINGS[key]


def _type_ok(value: Any, types: tuple) -> bool:
    if value is None:
        return None in types
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return any(t is not None and isinstance(value, t) for t in types)


def _type_name(types: tuple) -> str:
    names = [t.__name__ if t is not None else "null" for t in types]
    return " or ".join(
        {"str": "string", "bool": "boolean", "int": "integer", "float": "number"}.get(n, n) for n in names
    )


def _domain_problem(name: str, value: Any, domain: tuple[bool, float, float]) -> list[str]:
    integral, lo, hi = domain
    if isinstance(value, bool) or not isinstance(value, int | float) or (integral and not isinstance(value, int)):
        return [f"{name}: must be {'an integer' if integral else 'a number'}, got {json.dumps(value)}"]
    if not math.isfinite(value) or not lo <= value <= hi:
        return [f"{name}: must lie in [{lo:g}, {hi:g}], got {json.dumps(value)}"]
    return []


def _read_section(src: dict, schema: dict, prefix: str, problems: list[str]) -> dict:
    """Values of ``schema`` taken from ``src`` (defaults for missing keys), type problems recorded."""
    out: dict[str, Any] = {}
    for name, (types, default) in schema.items():
        if name not in src:
            if default is MANDATORY:
                problems.append(f"{prefix}{name}: missing mandatory field")
                out[name] = None
            else:
                out[name] = default
            continue
        value = src[name]
        if not _type_ok(value, types):
            problems.append(f"{prefix}{name}: must be {_type_name(types)}, got {json.dumps(value)}")
            out[name] = default if default is not MANDATORY else None
        else:
            out[name] = float(value) if float in types and isinstance(value, int) else value
    return out


@dataclass
class QuantConfig:
    """Quantization modes, normalized from either spelling (boolean flags or ``quant_algo``).

    ``style`` records which spelling the source used so that saving writes it back the same way.
    """

    use_smooth_quant: bool = False
    per_channel: bool = False
    per_token: bool = False
    per_group: bool = False
    group_size: int = 64
    int8_kv_cache: bool = False
    enable_fp8: bool = False
    fp8_kv_cache: bool = False
    use_weight_only: bool = False
    weight_only_precision: str = "int8"
    style: str = "flags"  # "flags" | "algo"
    extra: dict = field(default_factory=dict)  # has_zero_point, pre_quant_scale, exclude_modules, ...

    @property
    def weight_only(self) -> str | None:
        """'int8' / 'int4' for weight-only quantization, else None."""
        return self.weight_only_precision if self.use_weight_only else None

    @property
    def kv_cache(self) -> str | None:
        return "int8" if self.int8_kv_cache else "fp8" if self.fp8_kv_cache else None

    @property
    def scheme(self) -> str:
        """The linears' tensor layout (``names.linear_tensors``): ``none``, ``weight_only`` (int8/int4 ``[in, out]``
        with ``per_channel_scale``), or ModelOpt's ``fp8``, ``int8_sq``, ``int4_awq`` (INT4 per group with
        ``pre_quant_scale``: ``weights_scaling_factor`` / ``prequant_scaling_factor`` beside an ``[out/2, in]``
        weight)."""
        if self.use_weight_only:  # the precedence of ``quant_algo``
            awq = self.per_group and self.weight_only_precision == "int4" and self.extra.get("pre_quant_scale")
            return "int4_awq" if awq else "weight_only"
        return "fp8" if self.enable_fp8 else "int8_sq" if self.use_smooth_quant else "none"

    @property
    def quant_algo(self) -> str | None:
        if self.use_weight_only:
            algo = WEIGHT_ONLY_ALGOS_REV.get(self.weight_only_precision, "W8A16")
            return algo + ("_" + self.extra.get("_variant", "AWQ") if self.per_group else "")
        if self.enable_fp8:
            return "FP8"
        if self.use_smooth_quant:
            if self.per_channel:
                return "W8A8_SQ_PER_CHANNEL" + ("_PER_TOKEN_PLUGIN" if self.per_token else "")
            return "W8A8_SQ_PER_TENSOR" + ("_PER_TOKEN_PLUGIN" if self.per_token else "_PLUGIN")
        return None

    @property
    def kv_cache_quant_algo(self) -> str | None:
        return self.kv_cache.upper() if self.kv_cache else None

    @property
    def is_quantized(self) -> bool:
        return bool(self.quant_algo or self.kv_cache)

    @classmethod
    def from_dict(cls, src: dict, problems: list[str]) -> QuantConfig:
        if not isinstance(src, dict):
            problems.append(f"quantization: must be an object, got {json.dumps(src)}")
            return cls()
        if "quant_algo" in src or "kv_cache_quant_algo" in src:
            return cls._from_algo(src, problems)
        values = _read_section(src, QUANT_FLAG_FIELDS, "quantization.", problems)
        extra = {k: v for k, v in src.items() if k not in QUANT_FLAG_FIELDS}
        return cls(**values, style="flags", extra=extra)

    @classmethod
    def _from_algo(cls, src: dict, problems: list[str]) -> QuantConfig:
        algo, kv = src.get("quant_algo"), src.get("kv_cache_quant_algo")
        q = cls(
            style="algo",
            extra={k: v for k, v in src.items() if k not in ("quant_algo", "kv_cache_quant_algo", "group_size")},
        )
        gs = src.get("group_size", 128 if algo and str(algo).endswith(("_AWQ", "_GPTQ")) else 64)
        if not _type_ok(gs, (int,)):
            problems.append(f"quantization.group_size: must be integer, got {json.dumps(gs)}")
        else:
            q.group_size = gs
        if algo is not None:
            if not isinstance(algo, str):
                problems.append(f"quantization.quant_algo: must be string or null, got {json.dumps(algo)}")
            elif algo.split("_")[0] in WEIGHT_ONLY_ALGOS:
                q.use_weight_only, q.weight_only_precision = True, WEIGHT_ONLY_ALGOS[algo.split("_")[0]]
                q.per_group = algo.endswith(("_AWQ", "_GPTQ"))
                if q.per_group:
                    q.extra["_variant"] = algo.rsplit("_", 1)[1]
            elif algo == "FP8":
                q.enable_fp8 = True
            elif algo.startswith("W8A8_SQ_"):
                q.use_smooth_quant = True
                q.per_channel = "PER_CHANNEL" in algo
                q.per_token = "PER_TOKEN" in algo
            else:
                problems.append(f"quantization.quant_algo: unknown value {algo!r}")
        if kv is not None:
            if kv not in KV_CACHE_ALGOS:
                problems.append(
                    f"quantization.kv_cache_quant_algo: must be one of {list(KV_CACHE_ALGOS)}, got {json.dumps(kv)}"
                )
            else:
                q.int8_kv_cache, q.fp8_kv_cache = kv == "INT8", kv == "FP8"
        return q

    def to_dict(self) -> dict:
        extra = {k: v for k, v in self.extra.items() if not k.startswith("_")}
        if self.style == "algo":
            out: dict[str, Any] = {"quant_algo": self.quant_algo, "kv_cache_quant_algo": self.kv_cache_quant_algo}
            if self.per_group or "group_size" in self.extra or self.group_size != 64:
                out["group_size"] = self.group_size
            return {**out, **extra}
        return {**{name: getattr(self, name) for name in QUANT_FLAG_FIELDS}, **extra}

    def problems(self) -> list[str]:
        out = []
        if self.weight_only_precision not in WEIGHT_ONLY_PRECISIONS:
            out.append(
                f"quantization.weight_only_precision: must be one of {list(WEIGHT_ONLY_PRECISIONS)}, "
                f"got {self.weight_only_precision!r}"
            )
        if self.group_size < 1:
            out.append(f"quantization.group_size: must be >= 1 (got {self.group_size})")
        return out


WEIGHT_ONLY_ALGOS_REV = {v: k for k, v in WEIGHT_ONLY_ALGOS.items()}


@dataclass
class CheckpointConfig:
    """A checkpoint's ``config.json``. Model-specific fields live in ``extra`` and survive a round trip."""

    architecture: str
    dtype: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_act: str
    logits_dtype: str = "float32"
    max_position_embeddings: int | None = None
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    norm_epsilon: float = 1e-5
    position_embedding_type: str = "learned_absolute"
    use_prompt_tuning: bool = False
    use_parallel_embedding: bool = False
    embedding_sharding_dim: int = 0
    share_embedding_table: bool = False
    mapping: Mapping = field(default_factory=Mapping)
    quantization: QuantConfig = field(default_factory=QuantConfig)
    extra: dict = field(default_factory=dict)
    parse_problems: list = field(default_factory=list, repr=False, compare=False)
    notes: list = field(default_factory=list, repr=False, compare=False)  # fields corrected from the tensors

    # ---- derived values -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.extra.get("head_size") or self.hidden_size // self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def np_dtype(self):
        return DTYPES[self.dtype]

    def get(self, name: str, default: Any = None) -> Any:
        """A model-specific field (from ``extra``) or ``default`` when it is absent or null."""
        value = self.extra.get(name)
        return default if value is None else value

    def with_mapping(self, tp_size: int = 1, pp_size: int = 1) -> CheckpointConfig:
        out = copy.deepcopy(self)
        out.mapping = Mapping(world_size=tp_size * pp_size, tp_size=tp_size, pp_size=pp_size)
        return out

    # ---- (de)serialization ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, src: dict) -> CheckpointConfig:
        """Parse without raising; problems land in ``parse_problems`` (see ``problems()``)."""
        problems: list[str] = []
        if not isinstance(src, dict):
            raise CheckpointError(f"{CONFIG_FILE}: top level must be a JSON object")
        values = _read_section(src, TOP_FIELDS, "", problems)
        msrc = src.get("mapping", {})
        if not isinstance(msrc, dict):
            problems.append(f"mapping: must be an object, got {json.dumps(msrc)}")
            msrc = {}
        mvals = _read_section(msrc, MAPPING_FIELDS, "mapping.", problems)
        if "world_size" not in msrc:  # TensorRT-LLM derives it
            mvals["world_size"] = mvals["tp_size"] * mvals["pp_size"]
        mextra = {k: v for k, v in msrc.items() if k not in MAPPING_FIELDS}
        quant = QuantConfig.from_dict(src.get("quantization", {}), problems)
        known = set(TOP_FIELDS) | {"mapping", "quantization"}
        extra = {k: v for k, v in src.items() if k not in known}
        if mextra:
            extra["_mapping_extra"] = mextra
        return cls(**values, mapping=Mapping(**mvals), quantization=quant, extra=extra, parse_problems=problems)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {name: getattr(self, name) for name in TOP_FIELDS}
        extra = dict(self.extra)
        mextra = extra.pop("_mapping_extra", {})
        out["mapping"] = {**{f.name: getattr(self.mapping, f.name) for f in fields(Mapping)}, **mextra}
        out["quantization"] = self.quantization.to_dict()
        out.update(extra)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` (``path`` may be the directory or the file)."""
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_FILE
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ---- validation -----------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every problem of the config, each prefixed with its field path."""
        out = list(self.parse_problems)
        bad = {p.split(":")[0] for p in out}
        if "architecture" not in bad and self.architecture not in ARCHITECTURES:
            out.append(
                f"architecture: unsupported {self.architecture!r} (supported: {', '.join(sorted(ARCHITECTURES))})"
            )
        for name in ("dtype", "logits_dtype"):
            if name not in bad and getattr(self, name) not in DTYPES:
                out.append(f"{name}: must be one of {list(DTYPES)}, got {getattr(self, name)!r}")
        out += self._domain_problems(bad)
        out += field_problems(self.extra, self.hidden_act)
        bad |= {p.split(":")[0] for p in out}
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            out.append(
                f"position_embedding_type: must be one of {list(POSITION_EMBEDDING_TYPES)}, "
                f"got {self.position_embedding_type!r}"
            )
        if self.embedding_sharding_dim not in (0, 1):
            out.append(f"embedding_sharding_dim: must be 0 or 1 (got {self.embedding_sharding_dim})")
        out += self.mapping.problems(self.num_hidden_layers if "num_hidden_layers" not in bad else None)
        out += self.quantization.problems()
        if not {"hidden_size", "num_attention_heads", "num_key_value_heads"} & bad and not any(
            p.startswith("mapping.") for p in out
        ):
            out += self._shape_problems()
        return out

    def _domain_problems(self, bad: set[str]) -> list[str]:
        """Numeric fields outside their domain (``NUMERIC_DOMAINS``): NaN, infinite, negative, absurdly large."""
        out = []
        for name, domain in NUMERIC_DOMAINS.items():
            value = getattr(self, name) if name in TOP_FIELDS else self.extra.get(name)
            if name not in bad and value is not None:
                out += _domain_problem(name, value, domain)
        scaling = self.extra.get("rotary_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            out.append(f"rotary_scaling: must be an object or null, got {json.dumps(scaling)}")
        elif scaling:
            for name, domain in ROTARY_SCALING_DOMAINS.items():
                if scaling.get(name) is not None:
                    out += _domain_problem(f"rotary_scaling.{name}", scaling[name], domain)
        return out

    def _shape_problems(self) -> list[str]:
        out: list[str] = []
        heads, kv, tp = self.num_attention_heads, self.kv_heads, self.mapping.tp_size
        if not heads or not self.hidden_size:
            return out
        if "head_size" not in self.extra and self.hidden_size % heads:
            out.append(f"hidden_size: must be divisible by num_attention_heads ({heads}), got {self.hidden_size}")
        if kv < 1 or heads % kv:
            out.append(f"num_key_value_heads: must divide num_attention_heads ({heads}), got {kv}")
        if heads % tp:
            out.append(f"mapping.tp_size: must divide num_attention_heads ({heads})")
        elif kv >= 1 and kv % tp and tp % kv:
            out.append(f"mapping.tp_size: must divide num_key_value_heads ({kv}) or be a multiple of it")
        if self.intermediate_size is not None and self.intermediate_size % tp:
            out.append(f"mapping.tp_size: must divide intermediate_size ({self.intermediate_size})")
        if self.use_parallel_embedding and self.embedding_sharding_dim == 1 and self.hidden_size % tp:
            out.append(f"mapping.tp_size: must divide hidden_size ({self.hidden_size}) for embedding_sharding_dim 1")
        return out

    def check(self, source: str = CONFIG_FILE) -> CheckpointConfig:
        """Raise one ``CheckpointError`` listing every problem, else return self."""
        problems = self.problems()
        if problems:
            raise CheckpointError(
                f"{source}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                [f"{source}: {p}" for p in problems],
            )
        return self


def load_config(path: str | os.PathLike, check: bool = True) -> CheckpointConfig:
    """Read a checkpoint's ``config.json`` (``path``: the directory or the file), as written; validated by
    default. Fields that its tensors contradict are corrected only by ``reconcile.reconcile``, a separate step."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILE
    src = read_json_file(p, missing=_wrong_kind(p.parent) or f"{p}: missing (not a checkpoint directory?)")
    cfg = CheckpointConfig.from_dict(src)
    if cfg.parse_problems and "architecture" not in src and (message := _wrong_kind(p.parent)):
        raise CheckpointError(message)
    return cfg.check(str(p)) if check else cfg


def _wrong_kind(directory: Path) -> str | None:
    return wrong_kind_message(directory, CHECKPOINT)
