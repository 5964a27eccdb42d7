"""Reading a transformers ``config.json`` written by transformers 4.x or 5.x."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ckptfmt import CheckpointError

from ..foreign import foreign_format
from .files import HF_DIRECTORY, inside, model_directory, read_json

_MISSING = object()


def _non_finite(value: Any, where: str = "") -> str | None:
    """The dotted name of the first number that is infinite or NaN (JSON ``1e400``, ``NaN``) in ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top level)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if found := _non_finite(item, f"{where}.{key}" if where else str(key)):
            return found
    return None


class HFConfig:
    """A transformers config as a dict, with the lookups that differ between transformers versions."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    @classmethod
    def load(cls, model_dir: str | Path) -> HFConfig:
        path = model_directory(model_dir) / "config.json"
        if not path.exists():
            if other := foreign_format(path.parent, HF_DIRECTORY):
                raise CheckpointError(f"{path.parent}: not a HuggingFace model directory but {other}")
            raise CheckpointError(f"{path}: missing (not a HuggingFace model directory?)")
        data = read_json(inside(path.parent, path, "the model config"))
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: top level must be a JSON object")
        if bad := _non_finite(data):
            raise CheckpointError(f"{path}: field {bad} is not a finite number; fix config.json")
        return cls(data, path)

    def get(self, *names: str, default: Any = None) -> Any:
        """The first of ``names`` present (and not null)."""
        for name in names:
            if self.data.get(name) is not None:
                return self.data[name]
        return default

    def require(self, *names: str, kind: type = int) -> Any:
        value = self.get(*names, default=_MISSING)
        if value is _MISSING:
            raise CheckpointError(f"{self.path}: missing field {names[0]}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise CheckpointError(f"{self.path}: field {names[0]} must be {kind.__name__}, got {value!r}")
        # every required integer is a size or a count (a divisor)
        if kind is int and isinstance(value, int) and value < 1:
            raise CheckpointError(f"{self.path}: field {names[0]} must be a positive integer, got {value}")
        return value

    def unsupported(self, field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {field}={self.data.get(field)!r} is not supported ({why})")

    @property
    def model_type(self) -> str:
        return self.require("model_type", kind=str)

    @property
    def dtype(self) -> str | None:
        """Weight dtype: ``dtype`` (transformers 5) or ``torch_dtype`` (4.x)."""
        value = self.get("dtype", "torch_dtype")
        return value.removeprefix("torch.") if isinstance(value, str) else None

    @property
    def rope_parameters(self) -> dict:
        """transformers 5 ``rope_parameters`` merged over 4.x ``rope_scaling`` (either may be absent)."""
        out = dict(self.get("rope_scaling", default={}) or {})
        out.update(self.get("rope_parameters", default={}) or {})
        return out

    def rope_theta(self, *legacy: str, default: float = 10000.0) -> float:
        value = self.rope_parameters.get("rope_theta")
        if value is None:
            value = self.get("rope_theta", *legacy, default=default)
        return float(value)

    def partial_rotary_factor(self, *legacy: str, default: float = 1.0) -> float:
        value = self.rope_parameters.get("partial_rotary_factor")
        if value is None:
            value = self.get("partial_rotary_factor", *legacy, default=default)
        return float(value)

    def rope_scaling(self, parameters: dict | None = None) -> dict | None:
        """The rope scaling settings (TensorRT-LLM ``rotary_scaling``: ``type`` + ``factor`` + extras), or None;
        of ``parameters`` when given (one layer type's entry of Gemma 3's ``rope_parameters``)."""
        source = self.rope_parameters if parameters is None else parameters
        params = {k: v for k, v in source.items() if k not in ("rope_theta", "partial_rotary_factor")}
        kind = params.get("rope_type", params.get("type", "default"))
        if kind == "default":
            return None
        return {**params, "type": kind, "rope_type": kind}
