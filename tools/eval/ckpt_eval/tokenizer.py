"""Which tokenizer ckpt-run and ckpt-summarize use, and loading it (one place for both CLIs).

Converters copy the source model's tokenizer files into ``<checkpoint>/tokenizer/`` (``ckptfmt.TOKENIZER_DIR``);
an engine directory may carry the same folder. Without ``--tokenizer_dir`` the tools look there.
"""

from __future__ import annotations

from pathlib import Path

from ckptfmt import TOKENIZER_DIR

from .backends.base import RunnerError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def holds_tokenizer(directory: str | Path) -> bool:
    """True when ``directory`` has one of the files transformers' ``AutoTokenizer`` reads."""
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def find_tokenizer_dir(explicit: str | None, model_dir: str | None, fallback: str | None = None) -> str | None:
    """``explicit`` (``--tokenizer_dir``); else ``model_dir`` or its ``tokenizer/`` folder, whichever holds
    tokenizer files; else ``fallback`` (e.g. ``--hf_model_dir``); else None."""
    if explicit:
        return explicit
    for candidate in [Path(model_dir), Path(model_dir) / TOKENIZER_DIR] if model_dir else []:
        if holds_tokenizer(candidate):
            return str(candidate)
    return fallback


def missing_tokenizer(model_dir: str | None, flags: str = "--tokenizer_dir") -> RunnerError:
    """The one-line error when ``find_tokenizer_dir`` found nothing."""
    where = f"{model_dir} holds no tokenizer files and no {TOKENIZER_DIR}/ folder" if model_dir else "no model dir"
    return RunnerError(f"no tokenizer: {where}; pass {flags}")


def load_tokenizer(directory: str):
    """transformers' ``AutoTokenizer`` for ``directory``; a ``RunnerError`` (one line) when that fails."""
    if not Path(directory).is_dir():
        raise RunnerError(f"{directory}: tokenizer directory does not exist")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise RunnerError("tokenizing needs transformers: pip install 'ckpt-eval[torch]'") from None
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)  # never a model hub
    except (OSError, ValueError, TypeError) as err:
        raise RunnerError(
            f"{directory}: no usable tokenizer ({str(err).splitlines()[0]}); pass --tokenizer_dir"
        ) from None
