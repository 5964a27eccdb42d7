"""Console scripts: each CLI module (torch, transformers, numpy at load time) is imported with Ctrl-C and SIGTERM
held by ``ckptfmt.entry.run_main``, so a signal at any moment ends the tool in one line."""

from __future__ import annotations

from ckptfmt.entry import run_main


def ckpt_run() -> int:
    return run_main("ckpt_eval.run_cli:_main", prog="ckpt-run")


def ckpt_summarize() -> int:
    return run_main("ckpt_eval.summarize:_main", prog="ckpt-summarize")


def ckpt_mmlu() -> int:
    return run_main("ckpt_eval.mmlu:_main", prog="ckpt-mmlu")


def ckpt_perplexity() -> int:
    return run_main("ckpt_eval.perplexity:_main", prog="ckpt-perplexity")


def ckpt_lm_eval() -> int:
    return run_main("ckpt_eval.lm_eval_model:main", prog="ckpt-lm-eval")


def ckpt_eval() -> int:
    return run_main("ckpt_eval.ci:main", prog="ckpt-eval")
