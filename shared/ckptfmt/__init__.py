"""ckptfmt: TensorRT-LLM compatible checkpoint format (config, names, sharding, rank files, validation).

The public names below load their module on first use (PEP 562), so ``import ckptfmt.entry`` or
``ckptfmt.errors`` costs no numpy import: a tool installs its signal handlers before the heavy imports start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "BackgroundRankFileWriter": "background",
    "CheckpointConfig": "config",
    "QuantConfig": "config",
    "load_config": "config",
    "CONFIG_FILE": "constants",
    "DTYPES": "constants",
    "ENGINE_FILE": "constants",
    "MANIFEST_FILE": "constants",
    "RANK_FILE": "constants",
    "TOKENIZER_DIR": "constants",
    "CheckpointError": "errors",
    "BackgroundChecksums": "io",
    "RankFileReader": "io",
    "RankFileWriter": "io",
    "atomic_output_dir": "io",
    "check_output_dir": "io",
    "claim_output": "io",
    "save_checkpoint": "io",
    "to_numpy": "io",
    "verify_manifest": "io",
    "write_manifest": "io",
    "Mapping": "mapping",
    "ModelSpec": "names",
    "TensorSpec": "names",
    "expected_tensors": "names",
    "model_spec": "names",
    "check_checkpoint": "validate",
    "validate_checkpoint": "validate",
}
__all__ = [
    "BackgroundChecksums",
    "BackgroundRankFileWriter",
    "CONFIG_FILE",
    "CheckpointConfig",
    "CheckpointError",
    "DTYPES",
    "ENGINE_FILE",
    "MANIFEST_FILE",
    "Mapping",
    "ModelSpec",
    "QuantConfig",
    "RANK_FILE",
    "RankFileReader",
    "RankFileWriter",
    "TOKENIZER_DIR",
    "TensorSpec",
    "atomic_output_dir",
    "check_checkpoint",
    "check_output_dir",
    "claim_output",
    "expected_tensors",
    "load_config",
    "model_spec",
    "save_checkpoint",
    "to_numpy",
    "validate_checkpoint",
    "verify_manifest",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptfmt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from .background import BackgroundRankFileWriter
    from .config import CheckpointConfig, QuantConfig, load_config
    from .constants import CONFIG_FILE, DTYPES, ENGINE_FILE, MANIFEST_FILE, RANK_FILE, TOKENIZER_DIR
    from .errors import CheckpointError
    from .io import (
        BackgroundChecksums,
        RankFileReader,
        RankFileWriter,
        atomic_output_dir,
        check_output_dir,
        claim_output,
        save_checkpoint,
        to_numpy,
        verify_manifest,
        write_manifest,
    )
    from .mapping import Mapping
    from .names import ModelSpec, TensorSpec, expected_tensors, model_spec
    from .validate import check_checkpoint, validate_checkpoint
