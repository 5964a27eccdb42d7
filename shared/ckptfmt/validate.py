"""Validation of a whole checkpoint directory: config, rank files, tensors, manifest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import CheckpointConfig, load_config
from .constants import CONFIG_FILE, MANIFEST_FILE, RANK_FILE, SAFETENSORS_DTYPES
from .errors import CheckpointError
from .io import RankFileReader, verify_manifest
from .names import KV_CACHE_SCALES, LINEAR_SCALES, expected_tensors, weight_only_layout_problems
from .reconcile import reconcile

SCALE_SUFFIXES = (*LINEAR_SCALES, *KV_CACHE_SCALES)  # ModelOpt's scaling factors: values checked


def _dtype_name(tag: str) -> str:
    return str(SAFETENSORS_DTYPES[tag]) if tag in SAFETENSORS_DTYPES else tag


def scale_problems(label: str, values) -> list[str]:
    """A scaling factor must be finite and positive (a zero or negative one divides by zero or flips signs)."""
    a = np.asarray(values, dtype=np.float32)
    if not np.isfinite(a).all():
        return [f"{label}: {int((~np.isfinite(a)).sum())} non-finite value(s) (NaN/inf) in a scaling factor"]
    if (a <= 0).any():
        return [f"{label}: {int((a <= 0).sum())} zero or negative value(s) in a scaling factor (min {a.min():g})"]
    return []


def rank_problems(directory: Path, config: CheckpointConfig, rank: int) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one rank file against what the config expects."""
    path = directory / RANK_FILE.format(rank=rank)
    try:
        reader = RankFileReader(path)
    except CheckpointError as err:
        return [str(err)], []
    expected = expected_tensors(config, rank)
    problems, warnings = [], []
    for name, spec in expected.items():
        if name not in reader:
            if not spec.optional:
                problems.append(f"{path.name}: missing tensor {name}")
            continue
        e = reader.entries[name]
        dtype = _dtype_name(e["dtype"])
        if tuple(e["shape"]) != spec.shape or dtype != spec.dtype:
            problems.append(
                f"{path.name}: tensor {name}: {dtype}{list(e['shape'])}, expected {spec.dtype}{list(spec.shape)}"
            )
        elif name.endswith(SCALE_SUFFIXES):
            problems += scale_problems(f"{path.name}: tensor {name}", reader[name])
    for name in reader.entries:
        if name not in expected:
            warnings.append(f"{path.name}: unexpected tensor {name} (ignored)")
    return problems, warnings


def validate_checkpoint(
    directory: str | os.PathLike, hash_files: bool = True, require_manifest: bool = False
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a checkpoint directory; no problems means valid.

    A checkpoint without ``manifest.json`` (TensorRT-LLM's and ModelOpt's have none) is valid but unverified: a
    warning, or a problem with ``require_manifest``.
    """
    d = Path(directory)
    if not d.is_dir():
        return [f"{d}: not a directory"], []
    try:
        config = reconcile(load_config(d), d)  # the tensors decide what they contradict; noted as warnings
    except CheckpointError as err:
        return err.problems, []
    problems, warnings = verify_manifest(d, hash_files=hash_files), list(config.notes)
    problems += [f"{d / CONFIG_FILE}: {p}" for p in weight_only_layout_problems(config)]
    if not (d / MANIFEST_FILE).exists():
        unverified = f"{d / MANIFEST_FILE}: missing, so the files' contents are unverified (written by another tool?)"
        (problems if require_manifest else warnings).append(unverified)
    for rank in range(config.mapping.world_size):
        p, w = rank_problems(d, config, rank)
        problems += p
        warnings += w
    extra = sorted(
        p.name
        for p in d.glob("rank*.safetensors")
        if p.name not in {RANK_FILE.format(rank=r) for r in range(config.mapping.world_size)}
    )
    warnings += [f"{name}: rank file beyond world_size {config.mapping.world_size}" for name in extra]
    return problems, warnings


def check_checkpoint(directory: str | os.PathLike, hash_files: bool = True) -> CheckpointConfig:
    """The checkpoint's config, reconciled with its tensors (``reconcile``; what changed in ``notes``); one
    ``CheckpointError`` (all problems attached) unless the checkpoint is valid."""
    problems, _ = validate_checkpoint(directory, hash_files)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more, problems)
    return reconcile(load_config(directory), directory)
