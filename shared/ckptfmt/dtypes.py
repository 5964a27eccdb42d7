"""Dtype tables that load numpy and ml_dtypes only when a dtype is read.

ml_dtypes (bfloat16, fp8) takes ~0.6 s to import and numpy ~0.1 s; a tool's ``--help``, its argument
parsing and an fp16 conversion need neither name resolved. ``DtypeTable`` maps a name to a numpy dtype
spelled as ``"float16"`` (numpy) or ``"ml_dtypes.bfloat16"``; its keys are known without importing
anything. ``TagTable`` is its inverse (dtype -> name); it imports ml_dtypes only if some other code has:
a dtype of ml_dtypes cannot exist before that.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .entry import import_holding_signals

if TYPE_CHECKING:
    import numpy as np

_ML = "ml_dtypes."


def _resolve(spelling: str) -> np.dtype:
    import numpy as np

    if spelling.startswith(_ML):
        import_holding_signals(("ml_dtypes",))  # an interrupt in its initialisation would be an ImportError
        return np.dtype(getattr(importlib.import_module("ml_dtypes"), spelling[len(_ML) :]))
    return np.dtype(spelling)


class DtypeTable(Mapping[str, "np.dtype"]):
    """name -> numpy dtype; each value is resolved (and numpy or ml_dtypes imported) on first read."""

    def __init__(self, spellings: dict[str, str]):
        self.spellings = dict(spellings)
        self._resolved: dict[str, np.dtype] = {}

    def __getitem__(self, name: str) -> np.dtype:
        if name not in self._resolved:
            self._resolved[name] = _resolve(self.spellings[name])
        return self._resolved[name]

    def __contains__(self, name: object) -> bool:
        return name in self.spellings

    def __iter__(self) -> Iterator[str]:
        return iter(self.spellings)

    def __len__(self) -> int:
        return len(self.spellings)

    def __repr__(self) -> str:
        return f"DtypeTable({self.spellings!r})"


class TagTable(Mapping["np.dtype", str]):
    """The inverse of a ``DtypeTable``: numpy dtype -> name."""

    def __init__(self, table: DtypeTable):
        self._table = table

    def _names(self) -> dict[np.dtype, str]:
        loaded = "ml_dtypes" in sys.modules
        spellings = self._table.spellings
        return {self._table[n]: n for n in spellings if loaded or not spellings[n].startswith(_ML)}

    def __getitem__(self, dtype: Any) -> str:
        return self._names()[dtype]

    def __iter__(self) -> Iterator[np.dtype]:
        importlib.import_module("ml_dtypes")
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._table)
