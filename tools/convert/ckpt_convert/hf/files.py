"""A HuggingFace model directory: its ``config.json`` and its weight files (single, sharded + index, .bin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptfmt import CheckpointError
from ckptfmt.config import read_json_file

from ..foreign import foreign_format
from ..source_guard import check_inside, source_roots
from ..sources import TensorSource

HF_DIRECTORY = "a HuggingFace model directory"  # as ckptfmt.kinds names it

# (index file, single file) in order of preference
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def read_json(path: Path) -> Any:
    """A source's JSON file (config, index, quantization config): ckptfmt's strict small-JSON reader."""
    return read_json_file(path)


def model_directory(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (--model_dir must be a HuggingFace model directory)")
    return path


def inside(model_dir: Path, path: Path, what: str) -> Path:
    """``path`` (in ``model_dir``), refused if it is a link that leaves the model directory."""
    return check_inside(path, source_roots(model_dir), what)


def weight_files(model_dir: Path) -> dict[Path, list[str] | None]:
    """Weight files of the directory, each with the tensor names its index promises (None: no index)."""
    for index_name, single_name in WEIGHT_LAYOUTS:
        index_path = model_dir / index_name
        if index_path.exists():
            files = _indexed_files(inside(model_dir, index_path, "the weight index"))
            return {inside(model_dir, path, "a weight file"): names for path, names in files.items()}
        if (model_dir / single_name).exists():
            return {inside(model_dir, model_dir / single_name, "the weight file"): None}
    if other := foreign_format(model_dir, HF_DIRECTORY):
        raise CheckpointError(f"{model_dir}: no HuggingFace weights, the weights are {other}")
    raise CheckpointError(
        f"{model_dir}: no weights found (expected model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)"
    )


def _indexed_files(index_path: Path) -> dict[Path, list[str] | None]:
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no weight_map")
    files: dict[Path, list[str] | None] = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or "/" in file or file.startswith("."):
            raise CheckpointError(f"{index_path}: weight_map entry {name}: bad file name {file!r}")
        names = files.setdefault(index_path.parent / file, [])
        assert names is not None  # only lists are set here
        names.append(name)
    return files


def open_hf_source(model_dir: str | Path) -> TensorSource:
    """Lazy tensors of a HuggingFace directory (files are opened on first use)."""
    return TensorSource(weight_files(model_directory(model_dir)))
