"""One rank of ``test_fused_decode_tp``: greedy tokens of a checkpoint under a ``compile`` mode.

Usage (under ``mpirun -n N``): ``python -m tests.eval.fused_tp_worker CHECKPOINT MODE [MODE ...]`` where a
MODE is "eager", "prompts" (eager, with ``compile_prompts``) or a ``ModelRunner.from_dir`` compile mode.
Without a GPU the fused kernels run in triton's interpreter. Rank 0 prints one JSON line: per mode, the
decode path taken and the tokens of each batch in ``BATCHES``; an error prints ``error: <message>`` on rank 0
and exits 1.
"""

from __future__ import annotations

import json
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported

from ckpt_eval.runner import ModelRunner  # noqa: E402

# one sequence, then a left-padded ragged batch, then one sequence again (a kept step reused)
BATCHES = [[[1, 2, 3, 4, 5]], [[9, 8, 7], [11, 12, 13, 14, 15, 16]], [[20, 21]]]


def greedy(path: str, mode: str) -> tuple[int, dict]:
    """This rank and what ``mode`` generates for ``BATCHES``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runner = ModelRunner.from_dir(path, device=device, compile=False if mode in ("eager", "prompts") else mode)
    if mode == "prompts":  # eager steps, prompts through compiled layers (what --compile adds on a GPU)
        runner.model.model.compile_prompts()
    tokens = [runner.generate([torch.tensor(p) for p in batch], max_new_tokens=6).tolist() for batch in BATCHES]
    return runner.model.par.rank, {"path": runner.model.decode_path, "tokens": tokens}


def main(path: str, *modes: str) -> int:
    rank, out = int(os.environ.get("OMPI_COMM_WORLD_RANK", 0)), {}
    try:
        for mode in modes:
            rank, out[mode] = greedy(path, mode)
    except Exception as err:  # noqa: BLE001 - the test reads the message
        if rank == 0:
            print(f"error: {err}", flush=True)
        return 1
    if rank == 0:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
