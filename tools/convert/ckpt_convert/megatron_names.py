"""Megatron-core GPT tensor names: normalization and tensor-parallel layout, as tables.

Checkpoints prefix names differently (Megatron-core ``model.``, NeMo 2 ``module.``, NeMo 1
``model.``) and the local (non-TE) layer spec names its norms on their own; ``normalize_name`` maps
every spelling onto one (``decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight``, ...)
and drops entries that hold no weights (``_extra_state``, rotary caches). Legacy Megatron-LM names, as
Megatron-DeepSpeed saves them (``language_model.encoder.layers.{i}.self_attention.query_key_value.weight``, ...),
name the same tensors with the same layout (fused qkv grouped per KV head, ``dense_h_to_4h`` = [gate; up]); the
``LEGACY`` tables rename them.
"""

from __future__ import annotations

import re

LAYER_TEMPLATE = "decoder.layers.{i}."
PREFIXES = ("model.module.", "module.", "model.")
ALIASES = {  # local-spec names -> the TE-fused names megatron itself maps them to in checkpoints
    ".input_layernorm.": ".self_attention.linear_qkv.layer_norm_",
    ".pre_mlp_layernorm.": ".mlp.linear_fc1.layer_norm_",
}
# legacy Megatron-LM / Megatron-DeepSpeed: name prefix -> Megatron-core prefix, then layer parts -> core parts
LEGACY_PREFIXES = {
    "language_model.embedding.": "embedding.",
    "language_model.encoder.": "decoder.",
    "language_model.output_layer.": "output_layer.",
}
LEGACY_PARTS = {
    ".self_attention.query_key_value.": ".self_attention.linear_qkv.",
    ".self_attention.dense.": ".self_attention.linear_proj.",
    ".post_attention_layernorm.": ".mlp.linear_fc1.layer_norm_",
    ".mlp.dense_h_to_4h.": ".mlp.linear_fc1.",
    ".mlp.dense_4h_to_h.": ".mlp.linear_fc2.",
}
NO_WEIGHTS = re.compile(r"(^|\.)_extra_state(/.*)?$|rotary_pos_emb\.inv_freq$")
_LAYER = re.compile(r"^decoder\.layers\.(?:(\d+)\.)?(.+)$")

# tensor-parallel layout of the layers (suffix -> dim split across tp ranks; absent: replicated)
COLUMN = (
    "linear_qkv.weight",
    "linear_qkv.bias",
    "linear_fc1.weight",
    "linear_fc1.bias",
    "word_embeddings.weight",
    "output_layer.weight",
)
ROW = ("linear_proj.weight", "linear_fc2.weight")
GATED = ("linear_fc1.weight", "linear_fc1.bias")  # each rank holds [its gate rows; its up rows]


def normalize_name(name: str) -> str | None:
    """The canonical Megatron name of a stored tensor, or None for entries without weights."""
    if NO_WEIGHTS.search(name):
        return None
    for prefix in PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    legacy = next((p for p in LEGACY_PREFIXES if name.startswith(p)), None)
    if legacy is not None:
        name = LEGACY_PREFIXES[legacy] + name[len(legacy) :]
        for old, new in LEGACY_PARTS.items():
            name = name.replace(old, new)
    for old, new in ALIASES.items():
        name = name.replace(old, new)
    return name


def split_layer_name(name: str) -> tuple[int | None, str | None]:
    """(layer index or None when stacked, rest) for ``decoder.layers.*`` names; (None, None) otherwise."""
    m = _LAYER.match(name)
    if not m:
        return None, None
    return (int(m.group(1)) if m.group(1) is not None else None), m.group(2)


def tp_split_dim(name: str) -> int | None:
    """Dim along which Megatron splits ``name`` across tensor-parallel ranks (None: replicated)."""
    if name.endswith(COLUMN):
        return 0
    if name.endswith(ROW):
        return 1
    return None
