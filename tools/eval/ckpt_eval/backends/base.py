"""What the generate loop needs from a backend: a model that runs a step over a static cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the CLIs import RunnerError before torch is needed
    import torch


class RunnerError(ValueError):
    """Bad input to the runner (prompt, flags, backend): a one-line message fit for a CLI."""


class Stepper(Protocol):
    """One process's handle on a model. Every launched rank calls the same methods in the same order."""

    vocab_size: int
    max_positions: int | None  # longest sequence the model can position (None: unbounded)
    device: torch.device
    is_sampler: bool  # this rank gets logits from ``step`` and picks the next tokens
    context_logits: bool  # ``step(all_logits=True)`` works (False: last-position logits only)

    def reset(self, batch: int, max_seq: int) -> None:
        """Start a new batch with room for ``max_seq`` positions per sequence."""

    def step(
        self, tokens: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, all_logits: bool
    ) -> torch.Tensor | None:
        """Run ``tokens`` [batch, seq] (left padded by ``pad`` [batch]) at cache ``slots`` [seq].

        Returns float32 logits [batch, seq or 1, vocab] on the sampler rank, None elsewhere.
        """

    def share(self, x: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The sampler rank's ``x`` on every rank."""
