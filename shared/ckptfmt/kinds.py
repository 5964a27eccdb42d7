"""What kind of directory a user handed us, when it is not the kind the tool wanted: one table, one function.

``directory_kind(path)`` names the format of a model, checkpoint or engine directory from its config keys and
marker files, so that a wrong ``--checkpoint_dir`` or ``--model_dir`` is answered with what it is and which
command takes it, instead of "missing mandatory field architecture" or "no weights found".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .constants import CONFIG_FILE
from .errors import CheckpointError
from .jsonfile import read_json_file


@dataclass(frozen=True)
class Kind:
    name: str  # what it is, in words
    hint: str  # what to do with it
    config_keys: tuple[str, ...] = ()  # all present in config.json
    markers: tuple[str, ...] = ()  # any present (glob patterns, relative to the directory)


ENGINE_DIRECTORY = "an engine directory (ckpt-build / trtllm-build output)"
CHECKPOINT = "a TensorRT-LLM checkpoint"

KINDS: tuple[Kind, ...] = (
    Kind(
        ENGINE_DIRECTORY,
        "pass it as --engine_dir; --checkpoint_dir takes a converted checkpoint",
        config_keys=("pretrained_config", "build_config"),
    ),
    Kind(
        CHECKPOINT,
        "build it first: ckpt-build --checkpoint_dir DIR --output_dir ENGINE, or pass it as --checkpoint_dir",
        config_keys=("architecture",),
    ),
    Kind(
        "a HuggingFace model directory",
        "convert it first: ckpt-convert hf --model_dir DIR --output_dir CKPT",
        config_keys=("model_type",),
    ),
    Kind(
        "a HuggingFace model directory",
        "convert it first: ckpt-convert hf --model_dir DIR --output_dir CKPT",
        config_keys=("architectures",),
    ),
    Kind(
        "a DeepSpeed checkpoint",
        "DeepSpeed sources are not supported yet",
        markers=("latest", "global_step*/mp_rank_*_model_states.pt", "mp_rank_*_model_states.pt", "zero_pp_rank_*"),
    ),
    Kind(
        "a JAX (orbax / flax) checkpoint",
        "convert it first: ckpt-convert jax --checkpoint_dir DIR --model_config HF_CONFIG --output_dir CKPT",
        markers=("_CHECKPOINT_METADATA", "_METADATA", "*/_METADATA", "*.msgpack", "checkpoint"),
    ),
    Kind(
        "a NeMo / Megatron checkpoint",
        "convert it first: ckpt-convert nemo --nemo_ckpt_path PATH --output_dir CKPT",
        markers=("model_config.yaml", "*/model_config.yaml", "context/model.yaml", "weights/metadata.json"),
    ),
)


def directory_kind(path: str | os.PathLike, read_config: bool = True) -> Kind | None:
    """The first ``KINDS`` entry ``path`` matches, or None (not a directory, or nothing recognisable).

    ``read_config=False`` matches marker files only (for a caller that already knows config.json is not its own).
    """
    d = Path(path)
    if not d.is_dir():
        return None
    keys: set[str] = set()
    if read_config and (d / CONFIG_FILE).is_file():
        try:
            data = read_json_file(d / CONFIG_FILE)
            keys = set(data) if isinstance(data, dict) else set()
        except CheckpointError:
            pass  # unreadable: judged by its marker files alone
    for kind in KINDS:
        if kind.config_keys and set(kind.config_keys) <= keys:
            return kind
        if kind.markers and any(next(d.glob(m), None) is not None for m in kind.markers):
            return kind
    return None


def wrong_kind_message(path: str | os.PathLike, wanted: str) -> str | None:
    """One line for a directory that is recognisably not ``wanted``, or None."""
    kind = directory_kind(path)
    if kind is None or kind.name == wanted:
        return None
    return f"{path}: this is {kind.name}, not {wanted}" + (f"; {kind.hint}" if kind.hint else "")
