"""Megatron-DeepSpeed pipeline layers (``GPTModelPipe``): one tensor-parallel rank's layer files -> global names.

``layer_XX[-model_YY]-model_states.pt`` holds one ``PipelineModule`` layer's state dict with local names. Layers
without parameters (the fork's dtype casts, transposes) write no file, so file numbers are offset from transformer
layer numbers by an amount that differs between forks: it is read from the contents, never assumed. In file order:

- the embedding (``EmbeddingPipe``: ``word_embeddings.weight``, ``position_embeddings.weight``);
- transformer layers (``input_layernorm.*``, ``self_attention.*``, ``mlp.*``), numbered from 0;
- the final norm (plain ``weight`` / ``bias``) and, untied, the head (``LMHeadPipe``: ``lm_head.weight``);
- a tied embedding again (``TiedLayerSpec`` used as the head, both stages save it): the first copy is taken. DeepSpeed
  keeps only the tied attribute (the fork's ``word_embeddings_weight``) equal across stages, so the copies of
  ``word_embeddings.weight`` are checked equal when it is read; the rest of a later copy (an unused position table)
  is not read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ckptfmt import CheckpointError

from .deepspeed_pickle import DeepSpeedPickle, tensor_at
from .torch_pickle import StoredTensor

EMBEDDING_LOCAL = "word_embeddings.weight"
LAYER_PARTS = ("input_layernorm.", "self_attention.", "post_attention_layernorm.", "mlp.")
# names only Megatron layers have (HF decoder layers share input_layernorm / post_attention_layernorm)
MEGATRON_LOCAL = (EMBEDDING_LOCAL, "self_attention.query_key_value.weight", "mlp.dense_h_to_4h.weight")
EMBEDDING_PREFIX = "language_model.embedding."
LAYER_PREFIX = "language_model.encoder.layers.{k}."
TAIL = {
    "weight": "language_model.encoder.final_layernorm.weight",
    "bias": "language_model.encoder.final_layernorm.bias",
}
HEAD = {"lm_head.weight": "language_model.output_layer.weight"}
COMPARE_ROWS = 1 << 14  # rows of a tied copy compared at a time


@dataclass(frozen=True)
class TiedPart:
    """A tied layer's tensor: the first copy, read and checked equal to the later copies."""

    first: StoredTensor
    copies: tuple[StoredTensor, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.first.shape

    @property
    def dtype(self) -> str:
        return self.first.dtype

    def read(self) -> np.ndarray:
        value = self.first.read()
        for copy in self.copies:
            for start in range(0, value.shape[0], COMPARE_ROWS):
                rows = min(COMPARE_ROWS, value.shape[0] - start)
                box = copy.narrow((start,) + (0,) * (len(copy.shape) - 1), (rows, *copy.shape[1:])).read()
                if not np.array_equal(box, value[start : start + rows]):
                    raise CheckpointError(
                        f"{copy.source.label}: tied layer copy of {copy.name} differs from the one in "
                        f"{self.first.source.label} (rows {start}..{start + rows})"
                    )
        return value


def pipeline_parts(pickles: Sequence[DeepSpeedPickle]) -> dict[str, StoredTensor | TiedPart]:
    """Global legacy Megatron names of one tensor-parallel rank's layer files (in file order)."""
    out: dict[str, StoredTensor | TiedPart] = {}
    copies: dict[str, list[StoredTensor]] = {}
    layer = 0
    for pickle in pickles:
        tensors = _state(pickle)
        kind = _kind(tensors, pickle.label, layer)
        for local, t in tensors.items():
            name = _global(kind, local, layer, pickle.label)
            if kind == "embedding" and name in out:
                if local != EMBEDDING_LOCAL:
                    continue  # only the tied weight is synchronized: the first stage's copy is the one used
                first = out[name]
                if not isinstance(first, StoredTensor) or first.shape != t.shape:
                    raise CheckpointError(f"{pickle.label}: tied layer copy of {local} has another shape")
                copies.setdefault(name, []).append(t)
                continue
            if name in out:
                raise CheckpointError(
                    f"{pickle.label}: tensor {local}: a second {name} (pipeline layers not understood)"
                )
            out[name] = t
        layer += kind == "layer"
    for name, extra in copies.items():
        first = out[name]
        assert isinstance(first, StoredTensor)  # copies are only collected for stored tensors
        out[name] = TiedPart(first, tuple(extra))
    return out


def _state(pickle: DeepSpeedPickle) -> dict[str, StoredTensor]:
    root = pickle.root
    if not isinstance(root, dict):
        raise CheckpointError(f"{pickle.label}: top level is a {type(root).__name__}, not a layer state dict")
    return {str(k): tensor_at(v, pickle.label, str(k)) for k, v in root.items()}


def _kind(tensors: dict[str, StoredTensor], label: str, layers_seen: int) -> str:
    if EMBEDDING_LOCAL in tensors:
        return "embedding"
    if any(n.startswith(LAYER_PARTS) for n in tensors):
        return "layer"
    if set(tensors) <= set(TAIL) | set(HEAD) and layers_seen:
        return "tail"
    raise CheckpointError(
        f"{label}: a pipeline layer of tensors {sorted(tensors)[:4]} is no Megatron-DeepSpeed embedding, "
        "transformer layer, final norm or head"
    )


_NAMERS: dict[str, Callable[[str, int], str | None]] = {
    "embedding": lambda local, _: EMBEDDING_PREFIX + local,
    "layer": lambda local, k: LAYER_PREFIX.format(k=k) + local,
    "tail": lambda local, _: TAIL.get(local) or HEAD.get(local),
}


def _global(kind: str, local: str, layer: int, label: str) -> str:
    name = _NAMERS[kind](local, layer)
    if name is None:
        raise CheckpointError(f"{label}: tensor {local} of a final layer is not understood")
    return name
