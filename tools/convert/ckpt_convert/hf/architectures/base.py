"""What an architecture module provides, and config fields every architecture reads the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...rules import Table
from ..hf_config import HFConfig


@dataclass(frozen=True)
class HFArchitecture:
    """``model_types``: HF ``model_type`` -> checkpoint ``architecture``; ``translate``: HF config -> checkpoint
    config fields (model-specific extras included); ``tied_default``: ``tie_word_embeddings`` when absent."""

    model_types: dict[str, str]
    table: Table
    translate: Callable[[HFConfig], dict]
    tied_default: bool

    def tied(self, hf: HFConfig) -> bool:
        return bool(hf.get("tie_word_embeddings", default=self.tied_default))


# transformers' ACT2FN names of the exact (erf) GELU; gelu_new, gelu_fast, gelu_pytorch_tanh are the tanh form
EXACT_GELU = ("gelu", "gelu_python")


def activation(name: str) -> dict:
    """``hidden_act`` for transformers activation ``name``: the exact GELU is ``gelu`` + ``gelu_approximate: none``
    (the format's ``gelu`` is TensorRT-LLM's tanh approximation)."""
    if name in EXACT_GELU:
        return {"hidden_act": "gelu", "gelu_approximate": "none"}
    return {"hidden_act": name}


def sizes(
    hf: HFConfig,
    architecture: str,
    *,
    hidden: tuple[str, ...] = ("hidden_size",),
    layers: tuple[str, ...] = ("num_hidden_layers",),
    heads: tuple[str, ...] = ("num_attention_heads",),
    positions: tuple[str, ...] = ("max_position_embeddings",),
) -> dict:
    """The fields every decoder has (alternative HF field names as tuples)."""
    return {
        "architecture": architecture,
        "vocab_size": hf.require("vocab_size"),
        "hidden_size": hf.require(*hidden),
        "num_hidden_layers": hf.require(*layers),
        "num_attention_heads": hf.require(*heads),
        "max_position_embeddings": hf.get(*positions),
    }
