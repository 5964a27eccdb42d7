"""Test helpers for ckpt-mmlu, ckpt-perplexity and the lm-eval model: one tiny converted model with its
Hugging Face source and a tiny tokenizer, and running a task CLI in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.eval.summarize_helpers import save_tiny_tokenizer
from tests.tiny_models import convert_tiny


def tiny_model(base: Path) -> dict:
    """``base`` plus the tiny LLaMA checkpoint (``ckpt``), its HF directory (``hf``) and tokenizer (``tok``)."""
    ckpt = convert_tiny("llama-gqa", base / "ckpt", hf_dir=base / "hf")
    return {"base": base, "hf": base / "hf", "ckpt": ckpt, "tok": save_tiny_tokenizer(base / "tok")}


def ours_flags(tiny: dict) -> list[str]:
    return ["--checkpoint_dir", str(tiny["ckpt"]), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm"]


def run_cli(main: Callable, capsys, argv: list[str], prog: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines other than the ``[prog]`` status lines)."""
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if not line.startswith(f"[{prog}]")]
