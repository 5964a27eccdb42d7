"""Where this process sits among the launched ones (torchrun, mpirun or alone), from the environment only.

Kept apart from ``distributed`` so the CLIs can ask before importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """Where this process sits among the launched ones."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single | mpirun | torchrun


def detect_launch() -> Launch:
    """Rank and size from torchrun (RANK/WORLD_SIZE) or Open MPI (OMPI_COMM_WORLD_*), else one process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if "OMPI_COMM_WORLD_RANK" in env:
        return Launch(
            int(env["OMPI_COMM_WORLD_RANK"]),
            int(env["OMPI_COMM_WORLD_SIZE"]),
            int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
            "mpirun",
        )
    if "PMI_RANK" in env:  # MPICH / Intel MPI
        return Launch(int(env["PMI_RANK"]), int(env["PMI_SIZE"]), int(env.get("MPI_LOCALRANKID", 0)), "mpirun")
    return Launch()
