"""``LazyTensorSource``: the ``TensorSource`` protocol over a dict of lazy tensors (the Megatron readers use it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptfmt import CheckpointError

from .source_guard import Fingerprint, fingerprint
from .sources import LazyTensor


class LazyTensorSource:
    """Name -> ``LazyTensor`` (``tensors``, filled by the subclass); everything is opened up front."""

    location: Path
    tensors: dict[str, LazyTensor]
    _fingerprints: dict[Path, Fingerprint]

    def _fingerprint(self, files: list[Path]) -> None:
        """Record the files the tensors are read from, before they are opened."""
        self._fingerprints = {path: fingerprint(path) for path in files if path.is_file()}

    def fingerprints(self) -> dict[Path, Fingerprint]:
        """Each source file as it was when opened (compared again before the output is published)."""
        return dict(getattr(self, "_fingerprints", {}))

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> LazyTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.location}: no tensor {name}") from None

    def load(self, name: str) -> np.ndarray:
        return self.get(name).load()

    def open_all(self) -> None:
        """Every file was opened (and checked) on construction."""

    def close(self) -> None:
        self.tensors = {}

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        self.close()
