"""Log-likelihood of given tokens under a model (teacher forcing), over any ``Stepper``.

Sequences are laid out so that every row's first scored token sits in the same column ``S`` (left padding
``S - start``; shorter rows end in filler columns that no real token attends to). A backend with context
logits (torch, hf) scores every column in one forward pass; one without (trt: the engine returns the last
token's logits only) runs the columns before ``S`` as one prefill and then feeds the scored tokens one step
at a time, each step giving the logits of the next column. Every rank runs the same steps; the sampler
rank's results are shared at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .backends.base import RunnerError, Stepper


@dataclass
class TokenScores:
    """Per scored token: its log-probability and whether it is the model's most likely next token."""

    logprobs: torch.Tensor  # [n] float64
    greedy: torch.Tensor  # [n] bool

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())


def check_scored(sequences: Sequence, starts: Sequence[int], vocab_size: int, max_positions: int | None) -> list:
    """1-D token tensors with ``1 <= start < len``; one ``RunnerError`` line for the first bad one."""
    if not sequences or len(sequences) != len(starts):
        raise RunnerError(f"score: {len(sequences)} sequences but {len(starts)} starts")
    out = []
    for i, (seq, start) in enumerate(zip(sequences, starts)):
        seq = torch.as_tensor(seq)
        if seq.dim() != 1 or seq.dtype.is_floating_point:
            raise RunnerError(f"sequence {i}: expected a 1-D tensor of token ids, got {seq.dtype}{list(seq.shape)}")
        if not 1 <= start < seq.numel():
            raise RunnerError(f"sequence {i}: start {start} must leave context before it and tokens after it")
        if int(seq.min()) < 0 or int(seq.max()) >= vocab_size:
            raise RunnerError(f"sequence {i}: a token id is outside the vocabulary (size {vocab_size})")
        if max_positions and seq.numel() > max_positions:
            raise RunnerError(f"sequence {i}: {seq.numel()} tokens exceed max_position_embeddings {max_positions}")
        out.append(seq.long().cpu())
    return out


def aligned(sequences: list[torch.Tensor], starts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(tokens [batch, width], left padding [batch], S): row i's token ``start_i`` sits in column S."""
    first = max(starts)
    width = first + max(seq.numel() - start for seq, start in zip(sequences, starts))
    tokens = torch.zeros(len(sequences), width, dtype=torch.long)
    pad = torch.tensor([first - start for start in starts])
    for row, seq in enumerate(sequences):
        tokens[row, int(pad[row]) : int(pad[row]) + seq.numel()] = seq
    return tokens, pad, first


def column_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability [batch, cols] of ``targets`` [batch, cols] under ``logits`` [batch, cols, vocab] and
    whether each is the argmax; one row at a time, so the log-softmax copy stays one row's size."""
    lp = torch.empty(targets.shape, dtype=torch.float64)
    greedy = torch.empty(targets.shape, dtype=torch.bool)
    for row in range(logits.shape[0]):
        logsm = torch.log_softmax(logits[row].double(), dim=-1)
        lp[row] = logsm.gather(-1, targets[row, :, None].to(logsm.device))[:, 0].cpu()
        greedy[row] = logits[row].argmax(-1).cpu() == targets[row].cpu()
    return lp, greedy


def score_batch(model: Stepper, sequences: list[torch.Tensor], starts: Sequence[int]) -> list[TokenScores]:
    """``TokenScores`` of tokens ``seq[start:]`` given ``seq[:k]`` for each sequence (see module doc)."""
    tokens, pad, first = aligned(sequences, starts)
    b, width = tokens.shape
    tokens, pad = tokens.to(model.device), pad.to(model.device)
    model.reset(b, width)
    targets = tokens[:, first:]
    if getattr(model, "context_logits", True):
        out = model.step(tokens, torch.arange(width, device=model.device), pad, all_logits=True)
        columns = None if out is None else out[:, first - 1 : width - 1]
    else:
        out = model.step(tokens[:, :first], torch.arange(first, device=model.device), pad, all_logits=False)
        kept = [out]
        for col in range(first, width - 1):
            slot = torch.tensor([col], device=model.device)
            kept.append(model.step(tokens[:, col : col + 1], slot, pad, all_logits=False))
        columns = None if out is None else torch.cat(kept, dim=1)
    lp = greedy = None
    if columns is not None:
        lp, greedy = column_scores(columns, targets)
    shape = (b, width - first)
    lp = model.share(None if lp is None else lp.to(model.device), shape, torch.float64).cpu()
    greedy = model.share(None if greedy is None else greedy.to(model.device, torch.float32), shape, torch.float32)
    greedy = greedy.cpu() > 0.5
    n = [seq.numel() - start for seq, start in zip(sequences, starts)]
    return [TokenScores(lp[row, : n[row]], greedy[row, : n[row]]) for row in range(b)]


def next_token_logprobs(model: Stepper, prompts: list[torch.Tensor], token_ids: Sequence[int]) -> torch.Tensor:
    """Log-softmax at each prompt's last position, at ``token_ids``: [batch, len(token_ids)] float64.

    One prefill over the left-padded prompts (last-position logits: every backend, engines included)."""
    width = max(p.numel() for p in prompts)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        tokens[row, width - p.numel() :] = p
    pad = torch.tensor([width - p.numel() for p in prompts], device=model.device)
    model.reset(len(prompts), width)
    out = model.step(tokens.to(model.device), torch.arange(width, device=model.device), pad, all_logits=False)
    picked = None
    if out is not None:
        ids = torch.tensor(list(token_ids), device=out.device)
        picked = torch.log_softmax(out[:, -1].double(), dim=-1)[:, ids]
    return model.share(picked, (len(prompts), len(token_ids)), torch.float64).cpu()
