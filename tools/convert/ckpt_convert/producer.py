"""Making canonical tensors: which source tensors make each one (checked up front), then one at a time.

``check_coverage`` resolves every rule the model needs against the source (missing tensors, tensors the
table does not know) from names alone; ``TensorProducer`` then makes one canonical tensor at a time.
"""

from __future__ import annotations

import dataclasses
import re
from typing import cast

import numpy as np

from ckptfmt import DTYPES, CheckpointConfig, CheckpointError, TensorSpec, expected_tensors, model_spec
from ckptfmt.names import weight_only_layout_problems
from ckptfmt.quant import quantize_weight_only

from .quantized import quantization_tensor, quantization_tensor_error
from .rules import Rule, Table
from .sources import AnyTensorSource

SCALE_SUFFIX = ".per_channel_scale"
_LOCAL_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.")


def full_config(config: CheckpointConfig) -> CheckpointConfig:
    """The same model unsharded (tp 1, pp 1), unquantized, with its own lm_head: full canonical shapes."""
    out = config.with_mapping(1, 1)
    out.share_embedding_table = False
    out.quantization = dataclasses.replace(out.quantization, use_weight_only=False)
    return out


def full_tensor_specs(config: CheckpointConfig) -> dict[str, TensorSpec]:
    """Every canonical tensor of the model with its full (unsharded) shape, global layer names."""
    return expected_tensors(full_config(config), 0)


def canonical_name(config: CheckpointConfig, rank: int, name: str) -> tuple[str, str]:
    """(global canonical name, part) of a rank file tensor; part: value (int8 when quantized) or scale."""
    layers = config.mapping.layers_of_rank(config.num_hidden_layers, rank)
    glob = _LOCAL_LAYER.sub(lambda m: f"transformer.layers.{layers[int(m.group(1))]}.", name)
    if glob.endswith(SCALE_SUFFIX):
        return glob[: -len(SCALE_SUFFIX)] + ".weight", "scale"
    return glob, "value"


def resolve_sources(table: Table, source: AnyTensorSource, canonical: str) -> tuple[Rule, list[str]]:
    """The rule for ``canonical`` and the actual source names it reads (optional prefixes and fallback applied)."""
    try:
        rule, layer = table.rule_for(canonical)
    except KeyError:
        raise CheckpointError(f"mapping table: no rule for checkpoint tensor {canonical}") from None
    for templates in (rule.sources, rule.fallback):
        names = [_present(table, source, t.format(i=layer)) for t in templates]
        if templates and all(names):
            return rule, cast(list[str], names)  # all(names): none is None
    missing = next(t.format(i=layer) for t in rule.sources if not _present(table, source, t.format(i=layer)))
    raise CheckpointError(f"source weights: tensor {missing} missing (needed for {canonical})")


def _present(table: Table, source: AnyTensorSource, name: str) -> str | None:
    if name in source:
        return name
    for prefix in table.optional_prefixes:
        if name.startswith(prefix) and name[len(prefix) :] in source:
            return name[len(prefix) :]
    return None


def check_coverage(table: Table, source: AnyTensorSource, config: CheckpointConfig) -> None:
    """Every needed tensor is present and every source tensor is used or knowingly ignored."""
    used: set[str] = set()
    for canonical in full_tensor_specs(config):
        used.update(resolve_sources(table, source, canonical)[1])
    unused = [n for n in source.names() if n not in used and not table.ignored(n)]
    if (scale := quantization_tensor(unused)) is not None:
        raise quantization_tensor_error(scale, "source weights")
    if unused:
        raise CheckpointError(
            f"source weights: tensor {unused[0]} is not used by the mapping for this config "
            f"({len(unused)} unused; unsupported model variant?)"
        )


def check_quantizable(config: CheckpointConfig) -> None:
    """Weight-only layouts the target mapping cannot hold (``ckptfmt.names.weight_only_layout_problems``), named by
    the flag that asked for them."""
    if problems := weight_only_layout_problems(config):
        quant = config.quantization
        group = problems[0].startswith("quantization.group_size")
        flag = f"--group_size {quant.group_size}" if group else f"--weight_only_precision {quant.weight_only_precision}"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{flag}: {problems[0]}{more}")


class TensorProducer:
    """Makes full canonical tensors one at a time: read sources, transform, cast (or quantize)."""

    def __init__(self, table: Table, source: AnyTensorSource, config: CheckpointConfig):
        self.table, self.source, self.config = table, source, config
        self.spec = model_spec(config)
        self.full_specs = full_tensor_specs(config)
        self.dtype = DTYPES[config.dtype]
        self._quantized: tuple[str, np.ndarray, np.ndarray] | None = None
        unsharded = expected_tensors(config.with_mapping(1, 1), 0)
        self.quantized_weights = {n[: -len(SCALE_SUFFIX)] + ".weight" for n in unsharded if n.endswith(SCALE_SUFFIX)}

    def full(self, canonical: str) -> np.ndarray:
        """The full canonical tensor in the source dtype."""
        rule, names = resolve_sources(self.table, self.source, canonical)
        lazy = [self.source.get(n) for n in names]
        want = self.full_specs[canonical].shape
        try:
            out = rule.transform([t.load() for t in lazy], self.spec)
        except ValueError:  # a reshape that cannot work: the shapes do not fit the config
            out = None
        if out is None or tuple(out.shape) != want:
            shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in lazy)
            raise CheckpointError(
                f"{lazy[0].file}: {shapes} does not match config.json ({canonical} needs {list(want)})"
            )
        return out

    def get(self, canonical: str, part: str) -> np.ndarray:
        """``part`` of ``canonical``: the cast value, or the int8 weight / scale of its weight-only quantization."""
        quant = self.config.quantization
        if part == "value" and canonical not in self.quantized_weights:
            return self.full(canonical).astype(self.dtype, copy=False)
        if self._quantized is None or self._quantized[0] != canonical:
            self._quantized = None  # release the previous pair first
            group = quant.group_size if quant.per_group else None
            qweight, scale = quantize_weight_only(self.full(canonical), quant.weight_only_precision, group)
            self._quantized = (canonical, qweight, scale.astype(self.dtype))
        return self._quantized[2] if part == "scale" else self._quantized[1]
