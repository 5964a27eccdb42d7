"""ckptfmt: TensorRT-LLM compatible checkpoint format (config, names, sharding, rank files, validation)."""

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
    save_checkpoint,
    to_numpy,
    verify_manifest,
    write_manifest,
)
from .mapping import Mapping
from .names import ModelSpec, TensorSpec, expected_tensors, model_spec
from .validate import check_checkpoint, validate_checkpoint

__version__ = "0.1.0"
__all__ = [
    "BackgroundChecksums",
    "BackgroundRankFileWriter",
    "CONFIG_FILE",
    "DTYPES",
    "ENGINE_FILE",
    "MANIFEST_FILE",
    "RANK_FILE",
    "TOKENIZER_DIR",
    "CheckpointConfig",
    "CheckpointError",
    "Mapping",
    "ModelSpec",
    "QuantConfig",
    "RankFileReader",
    "RankFileWriter",
    "TensorSpec",
    "atomic_output_dir",
    "check_output_dir",
    "check_checkpoint",
    "expected_tensors",
    "load_config",
    "model_spec",
    "save_checkpoint",
    "to_numpy",
    "validate_checkpoint",
    "verify_manifest",
    "write_manifest",
]
