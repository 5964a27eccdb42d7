"""Log-likelihood of given tokens under a model (teacher forcing), over any ``Stepper``.

A backend with context logits (torch, hf) scores left-padded sequences in one forward pass. One without
(trt: the engine returns the last token's logits only) gets rows laid out so that their first scored tokens
share a column ``S`` (left padding ``S - start``; shorter rows end in filler columns no real token attends
to), runs the columns before ``S`` as one prefill and then feeds the scored tokens one step at a time, each
step giving the logits of the next column; rows are grouped so that this layout is no wider than the longest
row. Every rank runs the same steps; the sampler rank's results are shared at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from .backends.base import RunnerError, Stepper

CHUNK = 256  # positions per log-softmax in float64


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
    whether each is the argmax; in float64, ``CHUNK`` columns of one row at a time (a small copy)."""
    lp = torch.empty(targets.shape, dtype=torch.float64)
    greedy = torch.empty(targets.shape, dtype=torch.bool)
    for row in range(logits.shape[0]):
        for col in range(0, logits.shape[1], CHUNK):
            part, want = logits[row, col : col + CHUNK], targets[row, col : col + CHUNK].to(logits.device)
            logsm = torch.log_softmax(part.double(), dim=-1)
            lp[row, col : col + CHUNK] = logsm.gather(-1, want[:, None])[:, 0].cpu()
            greedy[row, col : col + CHUNK] = (part.argmax(-1) == want).cpu()
    return lp, greedy


def score_batch(model: Stepper, sequences: list[torch.Tensor], starts: Sequence[int]) -> list[TokenScores]:
    """``TokenScores`` of tokens ``seq[start:]`` given ``seq[:k]`` for each sequence (see module doc)."""
    if getattr(model, "context_logits", True):
        return score_context(model, sequences, starts)
    out: list[TokenScores] = [None] * len(sequences)  # type: ignore[list-item]
    for group in aligned_groups(sequences, starts):
        scores = score_stepped(model, [sequences[i] for i in group], [starts[i] for i in group])
        for i, score in zip(group, scores):
            out[i] = score
    return out


def score_context(model: Stepper, sequences: list[torch.Tensor], starts: Sequence[int]) -> list[TokenScores]:
    """One forward pass over the left-padded sequences with every position's logits."""
    width = max(seq.numel() for seq in sequences)
    tokens = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, width - seq.numel() :] = seq
    pad = torch.tensor([width - seq.numel() for seq in sequences])
    model.reset(len(sequences), width)
    dev = model.device
    out = model.step(tokens.to(dev), torch.arange(width, device=dev), pad.to(dev), all_logits=True)
    scored = None if out is None else column_scores(out[:, :-1], tokens[:, 1:])
    lp, greedy = share_scores(model, scored, (len(sequences), width - 1))
    first = [int(p) + start - 1 for p, start in zip(pad, starts)]
    return [TokenScores(lp[row, first[row] :], greedy[row, first[row] :]) for row in range(len(sequences))]


def aligned_groups(sequences: list[torch.Tensor], starts: Sequence[int]) -> list[list[int]]:
    """Rows in groups whose aligned layout is no wider than their longest sequence (similar starts)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(sequences)), key=lambda i: starts[i]):
        group = groups[-1] + [i] if groups else [i]
        longest = max(sequences[j].numel() for j in group)
        if groups and starts[i] + max(sequences[j].numel() - starts[j] for j in group) <= longest:
            groups[-1] = group
        else:
            groups.append([i])
    return groups


def score_stepped(model: Stepper, sequences: list[torch.Tensor], starts: Sequence[int]) -> list[TokenScores]:
    """Prefill of the columns before the first scored one, then one step per scored column."""
    tokens, pad, first = aligned(sequences, starts)
    b, width = tokens.shape
    tokens, pad = tokens.to(model.device), pad.to(model.device)
    model.reset(b, width)
    out = model.step(tokens[:, :first], torch.arange(first, device=model.device), pad, all_logits=False)
    kept = [out]
    for col in range(first, width - 1):
        slot = torch.tensor([col], device=model.device)
        kept.append(model.step(tokens[:, col : col + 1], slot, pad, all_logits=False))
    # on the sampler rank every step returns logits
    scored = None if out is None else column_scores(torch.cat(cast(list[torch.Tensor], kept), dim=1), tokens[:, first:])
    lp, greedy = share_scores(model, scored, (b, width - first))
    n = [seq.numel() - start for seq, start in zip(sequences, starts)]
    return [TokenScores(lp[row, : n[row]], greedy[row, : n[row]]) for row in range(b)]


def share_scores(model: Stepper, scored: tuple | None, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler rank's (log-probabilities, greedy flags) on every rank, on the CPU."""
    lp, greedy = scored if scored is not None else (None, None)
    lp = model.share(None if lp is None else lp.to(model.device), shape, torch.float64).cpu()
    flags = model.share(None if greedy is None else greedy.to(model.device, torch.float32), shape, torch.float32)
    return lp, flags.cpu() > 0.5


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
