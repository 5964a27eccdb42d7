"""JAX parameter trees -> HuggingFace tensor names: one table per layout family, each owning its reshapes.

A ``Leaf`` says which HF tensor one JAX leaf (or one slice ``index`` of its first axis) becomes and how: Flax
``Dense`` kernels are ``[in, out]`` (transposed), Gemma's einsum weights keep their head axes (``q_einsum``
``[heads, embed, head_dim]``, ``kv_einsum`` ``[2, kv_heads, embed, head_dim]``, ``qkv_einsum`` ``[3, ...]``,
``attn_vec_einsum`` ``[heads, head_dim, embed]``, ``gating_einsum`` ``[2, ffw, embed]`` or ``[2, embed, ffw]``). The
HF architecture tables then make the checkpoint, so the output is the one ``ckpt-convert hf`` writes.

JAX paths are the tree's keys split on ``/`` and joined by ``/``, without a ``params`` wrapper and without the table's
optional prefixes (Gemma's ``transformer``): the flat release form ``transformer/layer_0/attn/q_einsum`` + ``w`` and
the gemma library's nested tree give the same paths. ``{i}`` is the layer index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

Shape = tuple[int, ...]


class Dims(NamedTuple):
    """The configured model's sizes a reshape may need."""

    hidden: int
    vocab: int


@dataclass(frozen=True)
class Reshape:
    """``shape(source shape, dims)`` -> HF shape (None: the source shape does not fit); ``apply`` does it.
    ``drops``: the HF tensor may be smaller (rows the model never uses are left out; the source says so)."""

    name: str
    shape: Callable[[Shape, Dims], Shape | None]
    apply: Callable[[np.ndarray, Dims], np.ndarray]
    drops: bool = False


KEEP = Reshape("as is", lambda s, d: s, lambda a, d: a)
TRANSPOSE = Reshape(
    "[in, out] -> [out, in]",
    lambda s, d: (s[1], s[0]) if len(s) == 2 else None,
    lambda a, d: np.ascontiguousarray(a.T),
)
HEADS_IN = Reshape(  # q/k/v einsum [heads, embed, head_dim] -> Linear [heads * head_dim, embed]
    "[heads, embed, head_dim] -> [heads * head_dim, embed]",
    lambda s, d: (s[0] * s[2], s[1]) if len(s) == 3 else None,
    lambda a, d: np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(a.shape[0] * a.shape[2], a.shape[1]),
)
HEADS_OUT = Reshape(  # attn_vec_einsum [heads, head_dim, embed] -> Linear [embed, heads * head_dim]
    "[heads, head_dim, embed] -> [embed, heads * head_dim]",
    lambda s, d: (s[2], s[0] * s[1]) if len(s) == 3 else None,
    lambda a, d: np.ascontiguousarray(a.reshape(a.shape[0] * a.shape[1], a.shape[2]).T),
)


def _rows_shape(s: Shape, d: Dims) -> Shape | None:
    if len(s) != 2 or (s[0] == d.hidden) == (s[1] == d.hidden):  # neither, or square: orientation unknown
        return None
    return s if s[1] == d.hidden else (s[1], s[0])


ROWS = Reshape(  # gating_einsum[k]: [ffw, embed] (Gemma 2/3 releases) or [embed, ffw] (Gemma 1) -> [ffw, embed]
    "[ffw, embed] or [embed, ffw] -> [ffw, embed]",
    _rows_shape,
    lambda a, d: a if a.shape[1] == d.hidden else np.ascontiguousarray(a.T),
)
VOCAB_ROWS = Reshape(  # Gemma 1/2 releases store 256128 embedding rows for HF's vocab_size 256000
    "[rows >= vocab, embed] -> [vocab, embed]",
    lambda s, d: (d.vocab, s[1]) if len(s) == 2 and s[0] >= d.vocab else None,
    lambda a, d: a[: d.vocab],
    drops=True,
)


@dataclass(frozen=True)
class Leaf:
    """HF tensor ``hf`` = ``reshape(jax[index])`` for the first of the ``jax`` path templates present."""

    hf: str
    jax: tuple[str, ...]
    reshape: Reshape = KEEP
    index: int | None = None


def _leaves(hf: str, jax: str | tuple[str, ...], reshape: Reshape = KEEP, index: int | None = None) -> Leaf:
    return Leaf(hf, (jax,) if isinstance(jax, str) else jax, reshape, index)


HL = "model.layers.{i}."

# transformers' Flax LLaMA family (FlaxLlamaForCausalLM, FlaxMistral...): the HF names, Dense kernels [in, out]
LLAMA_FLAX: tuple[Leaf, ...] = (
    _leaves("model.embed_tokens.weight", "model/embed_tokens/embedding"),
    _leaves("model.norm.weight", "model/norm/weight"),
    _leaves("lm_head.weight", "lm_head/kernel", TRANSPOSE),
    *(
        _leaves(f"{HL}{n}.weight", f"model/layers/{{i}}/{n}/weight")
        for n in ("input_layernorm", "post_attention_layernorm")
    ),
    *(
        _leaves(f"{HL}{m}.{p}_proj.{kind}", f"model/layers/{{i}}/{m}/{p}_proj/{src}", op)
        for m, projs in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down")))
        for p in projs
        for kind, src, op in (("weight", "kernel", TRANSPOSE), ("bias", "bias", KEEP))
    ),
)

JL = "layer_{i}/"
ATTN = JL + "attn/"

# google-deepmind gemma (nested tree, or the flat transformer/... release form), every version
GEMMA_COMMON: tuple[Leaf, ...] = (
    _leaves("model.embed_tokens.weight", "embedder/input_embedding", VOCAB_ROWS),
    _leaves("model.norm.weight", "final_norm/scale"),
    _leaves(f"{HL}input_layernorm.weight", JL + "pre_attention_norm/scale"),
    _leaves(f"{HL}self_attn.q_proj.weight", ATTN + "q_einsum/w", HEADS_IN),
    *(_leaves(f"{HL}self_attn.{p}_proj.weight", ATTN + "kv_einsum/w", HEADS_IN, k) for k, p in enumerate("kv")),
    *(_leaves(f"{HL}self_attn.{p}_proj.weight", ATTN + "qkv_einsum/w", HEADS_IN, k) for k, p in enumerate("qkv")),
    _leaves(f"{HL}self_attn.o_proj.weight", ATTN + "attn_vec_einsum/w", HEADS_OUT),
    *(
        _leaves(f"{HL}mlp.{p}_proj.weight", (JL + "mlp/gating_einsum", JL + "mlp/gating_einsum/w"), ROWS, k)
        for k, p in enumerate(("gate", "up"))
    ),
    _leaves(f"{HL}mlp.down_proj.weight", (JL + "mlp/linear", JL + "mlp/linear/w"), TRANSPOSE),
)
# Gemma 1: HF calls the norm before the MLP post_attention_layernorm
GEMMA1 = (*GEMMA_COMMON, _leaves(f"{HL}post_attention_layernorm.weight", JL + "pre_ffw_norm/scale"))
# Gemma 2 and 3: four norms per layer; Gemma 3 adds q/k norms (HF q_norm / k_norm)
GEMMA2 = (
    *GEMMA_COMMON,
    _leaves(f"{HL}post_attention_layernorm.weight", JL + "post_attention_norm/scale"),
    _leaves(f"{HL}pre_feedforward_layernorm.weight", JL + "pre_ffw_norm/scale"),
    _leaves(f"{HL}post_feedforward_layernorm.weight", JL + "post_ffw_norm/scale"),
    _leaves(f"{HL}self_attn.q_norm.weight", ATTN + "_query_norm/scale"),
    _leaves(f"{HL}self_attn.k_norm.weight", ATTN + "_key_norm/scale"),
)


@dataclass(frozen=True)
class JaxTable:
    """A layout family: its leaves and the leading path parts some of its trees carry (``transformer``)."""

    name: str
    leaves: tuple[Leaf, ...]
    prefixes: tuple[str, ...] = ()


LLAMA = JaxTable("transformers Flax LLaMA names (model/layers/{i}/...)", LLAMA_FLAX)
GEMMA = "gemma library tree (layer_{i}/attn/q_einsum/w, ...; flat transformer/... or nested)"

# HF model_type of --model_config -> the JAX layout its tree is read in
TABLES: dict[str, JaxTable] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "gemma": JaxTable(GEMMA, GEMMA1, ("transformer",)),
    "gemma2": JaxTable(GEMMA, GEMMA2, ("transformer",)),
    "gemma3_text": JaxTable(GEMMA, GEMMA2, ("transformer",)),
}
