"""Run the builder's network on torch (CPU) for every rank of a checkpoint, engine-style.

Each step feeds the I/O contract's inputs (ids or hidden states, positions, last-token index, KV caches)
to ``define_rank_network`` lowered by ``TorchOps``. Tensor-parallel ranks run in threads that meet in
``ThreadGroup`` collectives; pipeline stages run in order, passing hidden states.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import torch

from ckptfmt.config import load_config
from ckptfmt.constants import RANK_FILE
from ckptfmt.engine import HIDDEN_IN, HIDDEN_OUT, INPUT_IDS, LAST_TOKEN_INDEX, LOGITS, POSITION_IDS, BuildConfig
from ckptfmt.io import RankFileReader
from ckptfmt.reconcile import reconcile

from .contract import rank_layout, stage_io
from .limits import Limits, supported_build
from .lower_torch import TORCH_DTYPES, ThreadGroup, TorchOps
from .network import define_rank_network
from .weights import RankWeights


class TorchRanks:
    """Every rank of a checkpoint, executing the engine network on torch tensors."""

    def __init__(self, checkpoint_dir: str | Path, limits: Limits | None = None, build: BuildConfig | None = None):
        self.config = reconcile(load_config(checkpoint_dir), checkpoint_dir)
        self.build = supported_build(self.config, limits or Limits(), build)  # what ckpt-build refuses, too
        self._stack = ExitStack()
        m = self.config.mapping
        self.layouts = [rank_layout(self.config, r, self.build) for r in range(m.world_size)]
        readers = [
            self._stack.enter_context(RankFileReader(Path(checkpoint_dir) / RANK_FILE.format(rank=r)))
            for r in range(m.world_size)
        ]
        self.weights = [RankWeights(readers[r], self.layouts[r]) for r in range(m.world_size)]
        self.constants: list[dict] = [{} for _ in range(m.world_size)]
        self.stages = [stage_io(self.config, p, self.build) for p in range(m.pp_size)]
        self.caches: list[dict[str, torch.Tensor]] = []

    def close(self) -> None:
        self._stack.close()

    def reset(self, batch: int) -> None:
        """Fresh zeroed KV caches for ``batch`` sequences."""
        self.caches = []
        for layout in self.layouts:
            stage = self.stages[layout.pp_rank]
            cache_inputs = [stage.tensor(name) for name in stage.aliases().values()]
            self.caches.append(
                {
                    t.name: torch.zeros(t.concrete_shape({"batch": batch}), dtype=TORCH_DTYPES[t.dtype])
                    for t in cache_inputs
                }
            )

    def _run_stage(self, pp_rank: int, feed: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every tp rank of stage ``pp_rank`` on ``feed``; each rank's outputs by name."""
        m = self.config.mapping
        ranks = [m.rank(t, pp_rank) for t in range(m.tp_size)]
        group = ThreadGroup(m.tp_size) if m.tp_size > 1 else None
        results: list[dict | BaseException | None] = [None] * len(ranks)

        def run(i: int, rank: int) -> None:
            try:
                ops = TorchOps({**feed, **self.caches[rank]}, group, i, self.constants[rank])
                define_rank_network(ops, self.layouts[rank], self.weights[rank])
                results[i] = ops.outputs
            except BaseException as err:  # re-raised in the caller
                results[i] = err
                if group is not None:
                    group._barrier.abort()

        if len(ranks) == 1:
            run(0, ranks[0])
        else:
            threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(ranks)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        outputs: list[dict[str, torch.Tensor]] = []
        for res in results:
            if isinstance(res, BaseException):
                raise res
            assert res is not None
            outputs.append(res)
        return outputs

    @torch.no_grad()
    def step(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        last_token_index: torch.Tensor | None = None,
        all_ranks: bool = False,
    ):
        """One engine step over every stage; returns rank 0 of the last stage's logits (or all tp ranks').

        ``last_token_index`` is needed unless the engine returns every token's logits."""
        feed = {INPUT_IDS: input_ids.to(torch.int32), POSITION_IDS: position_ids.to(torch.int32)}
        pp = self.config.mapping.pp_size
        for p in range(pp):
            if p == pp - 1 and self.build.gather_last_token_logits:
                if last_token_index is None:
                    raise ValueError("last_token_index: needed by an engine that gathers the last token's logits")
                feed[LAST_TOKEN_INDEX] = last_token_index.to(torch.int32)
            outs = self._run_stage(p, feed)
            if p < pp - 1:
                feed = {HIDDEN_IN: outs[0][HIDDEN_OUT], POSITION_IDS: feed[POSITION_IDS]}
        return [o[LOGITS] for o in outs] if all_ranks else outs[0][LOGITS]

    @torch.no_grad()
    def greedy(self, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy decoding of one prompt: prefill, then ``steps - 1`` single-token decode steps."""
        self.reset(1)
        ids = torch.tensor([prompt])
        logits = self.step(ids, torch.arange(len(prompt)).unsqueeze(0), torch.tensor([len(prompt) - 1]))
        tokens, all_logits = [], [logits]
        for i in range(steps):
            tokens.append(int(logits[0].argmax()))
            if i == steps - 1:
                break
            pos = len(prompt) + i
            logits = self.step(torch.tensor([[tokens[-1]]]), torch.tensor([[pos]]), torch.tensor([0]))
            all_logits.append(logits)
        return tokens, all_logits
