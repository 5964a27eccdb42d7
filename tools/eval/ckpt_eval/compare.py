"""Run several systems over the same batches, interleaved batch by batch, and compare their speed.

Two systems timed one after the other see different machine load (another job starting halfway makes the
second one look slow), so ckpt-summarize and ``bench/eval_summarize.py`` run batch 1 on each system, then
batch 2 on each (in the other order), and so on. The speed ratio comes from the two systems' tokens/s
measured back to back in each batch (``speed_ratio``), which a load change between batches does not move.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ckpt_eval")


@dataclass
class SystemRun:
    """One system's summaries and per-batch timings."""

    name: str
    predictions: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    batch_tokens: list[int] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return sum(self.batch_tokens)

    def speed(self) -> dict[str, float]:
        """tokens/s over all batches and the mean latency per batch."""
        total = sum(self.seconds)
        return {
            "tokens_per_s": self.new_tokens / total if total > 0 else float("nan"),
            "latency_per_batch_s": total / len(self.seconds) if self.seconds else float("nan"),
        }

    def batch_rates(self) -> list[float]:
        return [n / s if s > 0 else float("nan") for n, s in zip(self.batch_tokens, self.seconds)]


def generate_batch(runner, prompts: list, tokenizer, settings: dict) -> tuple[float, int, list[str]]:
    """(seconds, new tokens, decoded summaries) of one ``runner.generate`` call over ``prompts``."""
    import torch

    end_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    start = time.perf_counter()
    out = runner.generate(prompts, end_id=end_id, pad_id=pad_id, return_dict=True, **settings)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens, texts = 0, []
    for row, prompt in enumerate(prompts):
        end = int(out["sequence_lengths"][row, 0])
        tokens += end - prompt.numel()
        ids = out["output_ids"][row, 0, prompt.numel() : end].tolist()
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return seconds, tokens, texts


def run_interleaved(
    systems: Sequence[tuple[str, object]],
    batches: Sequence[list],
    tokenizer,
    settings: dict,
    after_batch: Callable[[int, dict[str, SystemRun]], None] | None = None,
) -> dict[str, SystemRun]:
    """Every batch on every system before the next batch; the order of the systems alternates per batch.

    ``systems``: (name, ``ModelRunner``) pairs; ``settings``: ``generate`` keywords (max_new_tokens, sampling).
    Every system sees the same prompts with the same sampling seed, so each batch's result does not depend
    on the order. ``after_batch(index, runs)`` is called after each batch (progress lines).
    """
    runs = {name: SystemRun(name) for name, _ in systems}
    for index, prompts in enumerate(batches):
        order = systems if index % 2 == 0 else list(reversed(systems))
        for name, runner in order:
            seconds, tokens, texts = generate_batch(runner, prompts, tokenizer, settings)
            runs[name].seconds.append(seconds)
            runs[name].batch_tokens.append(tokens)
            runs[name].predictions.extend(texts)
        if after_batch is not None:
            after_batch(index, runs)
    return runs


def speed_ratio(ours: SystemRun, reference: SystemRun) -> dict[str, Any]:
    """ours / reference tokens/s, from batches run back to back on both systems in alternating order.

    ``median``: the median over pairs of consecutive batches (one run ours first, the other the reference
    first) of the geometric mean of their two per-batch ratios, so that neither a load change between
    batches, nor a spike during one batch, nor an advantage of running first or second moves it; an odd
    last batch counts alone. ``overall``: the ratio of the totals (what the table's tokens/s give).
    """
    ratios = [a / b for a, b in zip(ours.batch_rates(), reference.batch_rates()) if a > 0 and b > 0]
    pairs = [math.sqrt(ratios[i] * ratios[i + 1]) for i in range(0, len(ratios) - 1, 2)]
    pairs += ratios[len(ratios) - len(ratios) % 2 :]
    overall = ours.speed()["tokens_per_s"] / reference.speed()["tokens_per_s"]
    return {
        "overall": overall,
        "median": statistics.median(pairs) if pairs else float("nan"),
        "batches": len(ratios),
        "per_batch": ratios,
    }


def progress_line(index: int, total: int, runs: dict[str, SystemRun]) -> str:
    times = ", ".join(f"{name} {run.seconds[index]:.2f} s" for name, run in runs.items())
    return f"batch {index + 1}/{total}: {times}"
