"""Correct config fields that the rank files contradict ("believe the tensors"): an explicit step.

``load_config`` returns config.json as written; a tool that runs or builds a checkpoint calls ``reconcile``
and prints its notes.

ModelOpt's fallback exporter (used when tensorrt_llm is not installed) writes some fields wrong, e.g.
GPT-2 with ``position_embedding_type: rope_gpt_neox`` beside a learned position table, or Qwen2 with
``bias: false`` beside q/k/v biases. Each rule below names a tensor whose presence decides a field.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import CheckpointConfig
from .constants import RANK_FILE
from .errors import CheckpointError
from .io import RankFileReader
from .names import POSITION_EMBEDDING, SUPPORTED_ARCHITECTURES, model_spec

QKV_BIAS = "transformer.layers.0.attention.qkv.bias"


@dataclass(frozen=True)
class Rule:
    tensor: str  # present in the first rank file
    field: str
    wrong: Callable[[CheckpointConfig], bool]  # the config contradicts the tensor's presence
    fix: Callable[[CheckpointConfig], None]
    value: str  # what the field becomes, for the note


def _set_learned(cfg: CheckpointConfig) -> None:
    cfg.position_embedding_type = "learned_absolute"


def _set_qkv_bias(cfg: CheckpointConfig) -> None:
    cfg.extra["qkv_bias"] = True


RULES = (
    Rule(
        POSITION_EMBEDDING,
        "position_embedding_type",
        lambda c: c.position_embedding_type != "learned_absolute",
        _set_learned,
        "learned_absolute",
    ),
    Rule(QKV_BIAS, "qkv_bias", lambda c: not model_spec(c).qkv_bias, _set_qkv_bias, "true"),
)


def reconcile_with_tensors(config: CheckpointConfig, first_rank_names: set[str], source: str) -> list[str]:
    """Apply every rule in place; returns one note per corrected field (empty when all agree)."""
    notes = []
    for rule in RULES:
        if rule.tensor in first_rank_names and rule.wrong(config):
            before = getattr(config, rule.field, config.extra.get(rule.field))
            rule.fix(config)
            notes.append(
                f"config.json: {rule.field} {before!r} contradicts {source}, which holds {rule.tensor}: "
                f"using {rule.value}"
            )
    return notes


def reconcile(config: CheckpointConfig, directory: str | os.PathLike) -> CheckpointConfig:
    """A copy of ``config`` with the fields that the first rank file's tensor names contradict corrected; its
    ``notes`` say what changed (``config`` itself is left as read). Unreadable rank files are left to
    validation."""
    rank0 = Path(directory) / RANK_FILE.format(rank=0)
    out = copy.deepcopy(config)
    if config.architecture not in SUPPORTED_ARCHITECTURES or not rank0.is_file():
        return out
    try:
        with RankFileReader(rank0) as reader:
            names = set(reader.entries)
    except CheckpointError:
        return out
    out.notes = reconcile_with_tensors(out, names, rank0.name)
    return out
