"""Next-token choice: repetition penalty, temperature, top-k, top-p, greedy (TensorRT-LLM's conventions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .backends.base import RunnerError

if TYPE_CHECKING:  # the CLIs check SamplingConfig before torch is imported; the functions import it
    import torch


@dataclass(frozen=True)
class SamplingConfig:
    """TensorRT-LLM defaults: ``top_k=1`` is greedy; ``top_k=0`` turns top-k off, ``top_p=0`` turns top-p off
    (both off, or ``temperature=0``, is greedy too)."""

    temperature: float = 1.0
    top_k: int = 1
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    random_seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise RunnerError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise RunnerError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise RunnerError(f"top_p must be within [0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise RunnerError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1 or (self.top_k == 0 and self.top_p in (0.0, 1.0))


def penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive (multiply negative) logits of already seen tokens by ``penalty`` (CTRL-style)."""
    import torch

    if penalty == 1.0:
        return scores
    return torch.where(seen, torch.where(scores > 0, scores / penalty, scores * penalty), scores)


def truncate(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, then outside the smallest set with probability >= top_p."""
    import torch

    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    return scores


def choose(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    cfg: SamplingConfig,
    generator: torch.Generator | None,
    log_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next tokens [batch] from ``logits`` [batch, vocab]; with ``log_probs`` also their log probabilities
    (after penalty and temperature). ``seen`` [batch, vocab] marks tokens for the repetition penalty."""
    import torch

    scores = logits.float()
    if seen is not None:
        scores = penalize(scores, seen, cfg.repetition_penalty)
    if cfg.greedy:
        tokens = scores.argmax(-1)
    else:
        scores = scores / cfg.temperature
        probs = truncate(scores, cfg.top_k, cfg.top_p).softmax(-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if not log_probs:
        return tokens, None
    return tokens, scores.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
