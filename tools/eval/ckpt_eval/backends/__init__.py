"""Backends by name. Each module exposes ``open_backend(path, device, **options) -> Stepper``."""

from __future__ import annotations

import importlib

from .base import RunnerError, Stepper

BACKENDS = {
    "torch": "ckpt_eval.backends.torch_backend",  # checkpoint directory, our model definition
    "hf": "ckpt_eval.backends.hf_backend",  # Hugging Face model directory, transformers (reference)
    "trt": "ckpt_eval.backends.trt_backend",  # TensorRT engine directory (needs a GPU + TensorRT)
}


def open_backend(name: str, path: str, device: str, **options) -> Stepper:
    if name not in BACKENDS:
        raise RunnerError(f"backend {name!r} is unknown (choose from {', '.join(BACKENDS)})")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ImportError as err:
        raise RunnerError(f"backend {name!r} needs {err.name}: pip install 'ckpt-eval[torch]'") from None
    return module.open_backend(path, device, **options)


__all__ = ["BACKENDS", "RunnerError", "Stepper", "open_backend"]
