"""What the runtime feeds an engine and what it allocates, from the engine config's I/O contract alone.

Pure planning, no TensorRT and no GPU: ``StagePlan`` checks that this evaluator understands every input and
output of a pipeline stage (``ckpt-engine/1`` contract) and gives the buffers of a batch (KV caches, outputs,
which output shares which input's buffer); ``schedule_step`` turns a step of the generate loop (left-padded
tokens at shared cache slots) into the contract's right-padded ``input_ids`` / ``position_ids`` /
``last_token_index``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from ckptfmt.engine import (
    EngineConfig,
    StageIo,
)

from .backends.base import RunnerError
from .torch_dtypes import TORCH_DTYPES


@dataclass(frozen=True)
class Buffer:
    """One tensor to bind: its shape for this step, dtype, and the buffer it lives in (its own name, or the
    aliased input's name for an output that updates a cache in place)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    is_input: bool
    storage: str


@dataclass(frozen=True)
class StepFeed:
    """The contract's per-step inputs (right-padded), and how many real tokens each row has."""

    input_ids: torch.Tensor  # int32 [batch, seq]
    position_ids: torch.Tensor  # int32 [batch, seq]: cache slot = position of each token
    last_token_index: torch.Tensor  # int32 [batch]
    lengths: torch.Tensor  # [batch] real tokens per row


class StagePlan:
    """One pipeline stage's contract, checked: step inputs, KV caches with their aliased outputs, outputs."""

    def __init__(self, config: EngineConfig, pp_rank: int, source: str = "config.json"):
        stage = config.io.stage(pp_rank)
        self.source, self.pp_rank, self.layers = source, pp_rank, list(stage.layers)
        self.first = pp_rank == 0
        self.last = pp_rank == len(config.io.stages) - 1
        self.build, self.kv = config.build_config, config.io.kv_cache
        self.dims = config.io.dims
        aliases = stage.aliases()
        targets = set(aliases.values())
        self.caches = [t for t in stage.inputs if t.name in targets]
        self.step_inputs = [t for t in stage.inputs if t.name not in targets]
        self.outputs = [t for t in stage.outputs if not t.alias_of]
        self.alias_outputs = [t for t in stage.outputs if t.alias_of]
        self._check(stage)

    def _check(self, stage: StageIo) -> None:
        """The format's step contract (``ckptfmt.engine``), in case ``config`` was not loaded through its check;
        this runtime also needs ``last_token_index`` (it reads the last token's logits, not every token's)."""
        problems = stage.contract_problems(self.kv, self.first, self.last, gathers_last=True)
        if problems:
            raise RunnerError(f"{self.source}: io.stages[{self.pp_rank}]: {problems[0]}")

    @property
    def max_seq_len(self) -> int:
        """Cache slots per sequence (static in the engine)."""
        return int(self.caches[0].shape[2]) if self.caches else self.build.max_seq_len

    def check_batch(self, batch: int, max_seq: int) -> None:
        """The engine's limits for a batch of ``batch`` sequences needing ``max_seq`` cache slots each."""
        lo, hi = self.dims["batch"]
        if not lo <= batch <= hi:
            raise RunnerError(
                f"batch of {batch} sequences: the engine was built for {lo}..{hi} (ckpt-build "
                "--max_batch_size); use a smaller --batch_size or rebuild"
            )
        if max_seq > self.max_seq_len:
            raise RunnerError(
                f"prompt + new tokens need {max_seq} cache slots but the engine was built with "
                f"max_seq_len {self.max_seq_len}; shorten --max_input_length/--output_len or rebuild "
                "with larger --max_input_len/--max_output_len"
            )

    def check_seq(self, seq: int) -> None:
        lo, hi = self.dims["seq"]
        if not lo <= seq <= hi:
            raise RunnerError(
                f"step of {seq} tokens: the engine takes {lo}..{hi} tokens per step (ckpt-build "
                "--max_input_len); shorten the prompts or rebuild"
            )

    def cache_buffers(self, batch: int) -> list[Buffer]:
        """The KV caches of a batch: allocated once per batch, read and updated in place by every step."""
        return [
            Buffer(t.name, t.concrete_shape({"batch": batch}), TORCH_DTYPES[t.dtype], True, t.name) for t in self.caches
        ]

    def bindings(self, batch: int, seq: int) -> list[Buffer]:
        """Every tensor of one step: step inputs, caches, outputs; aliased outputs live in their input's buffer."""
        dims = {"batch": batch, "seq": seq}
        out = [Buffer(t.name, t.concrete_shape(dims), TORCH_DTYPES[t.dtype], True, t.name) for t in self.step_inputs]
        out += self.cache_buffers(batch)
        out += [Buffer(t.name, t.concrete_shape(dims), TORCH_DTYPES[t.dtype], False, t.name) for t in self.outputs]
        out += [
            Buffer(t.name, t.concrete_shape(dims), TORCH_DTYPES[t.dtype], False, cast(str, t.alias_of))
            for t in self.alias_outputs  # each has alias_of
        ]
        return out

    def input_dtype(self, name: str) -> torch.dtype:
        return TORCH_DTYPES[next(t.dtype for t in self.step_inputs if t.name == name)]


def schedule_step(tokens: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, fill_id: int = 0) -> StepFeed:
    """The contract's inputs for one step of the generate loop.

    The loop (shared with the torch backend) keeps prompts left-padded: row b's real tokens sit at cache
    slots ``>= pad[b]``, and ``slots`` [seq] are the same for every row. The engine instead takes each row's
    real tokens first (right padding) with ``position_ids`` = their position in the sequence, which is also
    the cache slot the engine writes. So a token at loop slot s of row b goes to engine slot ``s - pad[b]``;
    the padding after a row's last real token gets the following positions (slots no real token has filled
    yet, overwritten by later steps before anything attends to them). ``last_token_index`` picks each row's
    last real token, whose logits the engine returns.
    """
    if tokens.dim() != 2 or slots.dim() != 1 or slots.numel() != tokens.shape[1] or pad.shape != tokens.shape[:1]:
        raise RunnerError(
            f"step: tokens {list(tokens.shape)}, slots {list(slots.shape)}, pad {list(pad.shape)} do not fit together"
        )
    seq = tokens.shape[1]
    if seq > 1 and not bool((slots[1:] - slots[:-1] == 1).all()):
        raise RunnerError("step: cache slots must be consecutive")
    positions = slots.view(1, -1) - pad.view(-1, 1)  # [batch, seq]; negative = left padding
    lengths = (positions >= 0).sum(1)
    if bool((lengths == 0).any()):
        row = int(torch.nonzero(lengths == 0)[0])
        raise RunnerError(f"step: row {row} has no real token at slots {int(slots[0])}..{int(slots[-1])}")
    skip = seq - lengths  # leading padding of each row in this step
    index = torch.arange(seq, device=tokens.device).view(1, -1) + skip.view(-1, 1)
    real = index < seq
    ids = torch.where(real, tokens.gather(1, index.clamp(max=seq - 1)), torch.full_like(tokens, fill_id))
    first = positions.gather(1, skip.view(-1, 1).clamp(max=seq - 1))  # position of each row's first real token
    position_ids = first + torch.arange(seq, device=tokens.device).view(1, -1)
    return StepFeed(ids.to(torch.int32), position_ids.to(torch.int32), (lengths - 1).to(torch.int32), lengths)
