"""Fixtures for the converter tests: tiny HF models (made once per session) and their expected tensors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ckptfmt import DTYPES
from tests.convert.reference import reference_tensors
from tests.tiny_models import TINY_CONFIGS, convert_tiny, make_tiny_hf

__all__ = ["TINY_CONFIGS", "convert_tiny", "run_cli"]

PARALLEL = [(1, 1), (2, 1), (1, 2), (2, 2)]


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """``tiny_hf(name, dtype="float32", fmt="safetensors", **overrides)`` -> HF directory, made once."""
    root = tmp_path_factory.mktemp("hf")
    made: dict[tuple, Path] = {}

    def make(name: str, dtype: str = "float32", fmt: str = "safetensors", **overrides) -> Path:
        key = (name, dtype, fmt, json.dumps(overrides, sort_keys=True))
        if key not in made:
            made[key] = make_tiny_hf(name, root / f"{name}-{dtype}-{fmt}-{len(made)}", dtype, fmt, **overrides)
        return made[key]

    return make


@pytest.fixture(scope="session")
def reference(tiny_hf):
    """``reference(hf_dir)`` -> expected canonical tensors of that HF model (cached)."""
    cache: dict[Path, dict] = {}

    def get(hf_dir: Path) -> dict[str, np.ndarray]:
        if hf_dir not in cache:
            cache[hf_dir] = reference_tensors(hf_dir)
        return cache[hf_dir]

    return get


def as_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(array).astype(DTYPES[dtype])


def assert_same(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Exact equality, dtype and shape included (bfloat16 compared bitwise)."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    a, b = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    assert a.tobytes() == b.tobytes(), f"{name}: values differ"


def run_cli(*argv: str, capsys) -> tuple[int, str, str]:
    """Run ``ckpt-convert`` in-process; returns (exit code, stdout, stderr)."""
    from ckpt_convert.cli import main

    capsys.readouterr()  # drop output of fixtures that ran before
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse usage errors
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def cli_command() -> list[str]:
    """The installed ``ckpt-convert`` entry point (subprocess runs)."""
    return [sys.executable, "-m", "ckpt_convert.cli"]


class RunsCode:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code in a hostile pickle)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
