"""The generate loop: one prefill over the left-padded prompts, then one-token decode steps (gpt-fast style).

Every rank runs the same loop; the sampler rank picks the tokens and ``Stepper.share`` hands them to the rest,
so all ranks feed and return the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .backends.base import RunnerError, Stepper
from .sampling import SamplingConfig, choose


@dataclass
class Prompts:
    """Prompts left-padded into one [batch, max_len] tensor; ``pad`` is each row's padding length."""

    tokens: torch.Tensor
    pad: torch.Tensor
    lengths: list[int]


@dataclass
class Step:
    """One generated token per sequence; ``active`` is False for sequences that had already ended."""

    index: int
    tokens: torch.Tensor  # [batch]
    active: torch.Tensor  # [batch] bool
    log_probs: torch.Tensor | None = None  # [batch]
    logits: torch.Tensor | None = None  # [batch, vocab]
    context_logits: torch.Tensor | None = None  # [batch, max_input_len, vocab], first step only (left padded)


def check_prompts(prompts: Sequence, vocab_size: int, max_positions: int | None, max_new_tokens: int) -> list:
    if isinstance(prompts, torch.Tensor) and prompts.dim() == 2:
        prompts = list(prompts)
    if not prompts:
        raise RunnerError("no prompts given")
    if max_new_tokens < 1:
        raise RunnerError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    out = []
    for i, p in enumerate(prompts):
        p = torch.as_tensor(p)
        if p.dim() != 1 or p.numel() == 0 or p.dtype.is_floating_point:
            raise RunnerError(f"prompt {i}: expected a non-empty 1-D tensor of token ids, got {p.dtype}{list(p.shape)}")
        if int(p.min()) < 0 or int(p.max()) >= vocab_size:
            raise RunnerError(
                f"prompt {i}: token id {int(p.max()) if int(p.max()) >= vocab_size else int(p.min())} "
                f"is outside the vocabulary (size {vocab_size})"
            )
        if max_positions and p.numel() + max_new_tokens > max_positions:
            raise RunnerError(
                f"prompt {i}: {p.numel()} tokens + {max_new_tokens} new tokens exceed the model's "
                f"max_position_embeddings {max_positions} (shorten the prompt or ask for fewer new tokens)"
            )
        out.append(p.long())
    return out


def left_pad(prompts: list[torch.Tensor], device: torch.device) -> Prompts:
    lengths = [int(p.numel()) for p in prompts]
    width = max(lengths)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        tokens[row, width - p.numel() :] = p
    pad = torch.tensor([width - n for n in lengths])
    return Prompts(tokens.to(device), pad.to(device), lengths)


def generate_steps(
    model: Stepper,
    prompts: Sequence,
    max_new_tokens: int,
    sampling: SamplingConfig,
    end_id: int | None = None,
    log_probs: bool = False,
    logits: bool = False,
    context_logits: bool = False,
) -> Iterator[Step]:
    """Yield one ``Step`` per generated position until every sequence ended or ``max_new_tokens`` is reached."""
    prompts = check_prompts(prompts, model.vocab_size, model.max_positions, max_new_tokens)
    batch = left_pad(prompts, model.device)
    b, width = batch.tokens.shape
    model.reset(b, width + max_new_tokens)
    generator = None
    if sampling.random_seed is not None and model.is_sampler:
        generator = torch.Generator(model.device).manual_seed(sampling.random_seed)
    seen = None
    if model.is_sampler and sampling.repetition_penalty != 1.0:
        seen = torch.zeros(b, model.vocab_size, dtype=torch.bool, device=model.device)
        for row, p in enumerate(prompts):
            seen[row, p.to(model.device)] = True
    active = torch.ones(b, dtype=torch.bool, device=model.device)
    out = model.step(batch.tokens, torch.arange(width, device=model.device), batch.pad, all_logits=context_logits)
    slot = torch.tensor([width], device=model.device)  # advanced on the device: no host sync per step
    for i in range(max_new_tokens):
        tokens = lp = last = None
        if model.is_sampler:
            assert out is not None  # step returns the logits on the sampler rank
            last = out[:, -1]
            tokens, lp = choose(last, seen, sampling, generator, log_probs)
            if end_id is not None:
                tokens = torch.where(active, tokens, torch.full_like(tokens, end_id))
        step = Step(i, model.share(tokens, (b,), torch.long), active.clone())
        if log_probs:
            step.log_probs = model.share(lp, (b,), torch.float32)
        if logits:
            step.logits = model.share(last, (b, model.vocab_size), torch.float32)
        if context_logits and i == 0:
            step.context_logits = model.share(out, (b, width, model.vocab_size), torch.float32)
        yield step
        if i == max_new_tokens - 1:
            return
        if end_id is not None:  # the only host sync of a step, and only when sequences can end
            active &= step.tokens != end_id
            if not bool(active.any()):
                return
        if seen is not None:
            seen.scatter_(1, step.tokens[:, None], True)
        out = model.step(step.tokens[:, None], slot, batch.pad, all_logits=False)
        slot += 1
