"""Mapping rules: how each canonical checkpoint tensor is made from source tensors (``Rule``, ``Table``).

A table is data: one ``Rule`` per canonical template (``{i}`` = global layer index) naming its source
templates and a transform. Which canonical tensors are needed comes from ``ckptfmt.expected_tensors``;
the table only says where each one comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import transforms
from .transforms import Transform

LAYER_NAME = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Rule:
    """Canonical ``target`` = ``transform(sources)``.

    ``fallback``: sources used instead when ``sources`` are absent (a tied lm_head reads the embedding;
    a norm that has another name in an older layout).
    """

    target: str
    sources: tuple[str, ...]
    transform: Transform = transforms.identity
    fallback: tuple[str, ...] = ()

    def __init__(
        self,
        target: str,
        sources: str | tuple[str, ...],
        transform: Transform = transforms.identity,
        fallback: str | tuple[str, ...] = (),
    ):
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "sources", (sources,) if isinstance(sources, str) else tuple(sources))
        object.__setattr__(self, "transform", transform)
        object.__setattr__(self, "fallback", (fallback,) if isinstance(fallback, str) else tuple(fallback))


@dataclass(frozen=True)
class Table:
    """All rules of one architecture plus the source tensors it knowingly skips.

    ``ignore``: regular expressions of source names that carry no weights (rotary caches, attention masks).
    ``optional_prefixes``: source prefixes some checkpoints omit (GPT-2 ``transformer.``, OPT ``model.``).
    """

    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()
    optional_prefixes: tuple[str, ...] = ()
    _by_target: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_target.update({r.target: r for r in self.rules})

    def rule_for(self, canonical: str) -> tuple[Rule, int | None]:
        """The rule making global canonical tensor ``canonical`` and its layer index (None outside layers)."""
        m = LAYER_NAME.match(canonical)
        template, layer = (f"transformer.layers.{{i}}.{m.group(2)}", int(m.group(1))) if m else (canonical, None)
        try:
            return self._by_target[template], layer
        except KeyError:
            raise KeyError(canonical) from None

    def ignored(self, source_name: str) -> bool:
        return any(re.fullmatch(p, source_name) for p in self.ignore)
