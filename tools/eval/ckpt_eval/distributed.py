"""Processes of a tp x pp run: rank discovery (mpirun, torchrun), rendezvous, and the few collectives we use.

``Parallel`` is what the model and the generate loop see: ``all_reduce``/``all_gather`` inside a
tensor-parallel group, ``send_next``/``recv_prev`` between pipeline stages, ``share`` from the sampling
rank to everyone. A single process gets the same object with every operation a no-op.
"""

from __future__ import annotations

import atexit
import datetime
import os
import socket
import sys
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ckptfmt import CheckpointError, Mapping

from .launch import Launch, detect_launch

TIMEOUT_ENV = "CKPT_EVAL_TIMEOUT_S"  # seconds a collective may wait for a peer (default 300)


def check_world(mapping: Mapping, launch: Launch) -> None:
    """Every rank of the checkpoint needs exactly one process."""
    if mapping.world_size != launch.world_size:
        hint = (
            f"launch it with `mpirun -n {mapping.world_size}` or `torchrun --nproc-per-node {mapping.world_size}`"
            if mapping.world_size > 1
            else "run it as a single process"
        )
        raise CheckpointError(
            f"config.json: mapping.world_size is {mapping.world_size} (tp {mapping.tp_size} x pp "
            f"{mapping.pp_size}) but {launch.world_size} process(es) were launched; {hint}"
        )


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 300)))


def _mpi_comm():
    """mpi4py's COMM_WORLD when mpi4py is installed (it also lets a failing rank abort the job)."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _init_method(launch: Launch) -> str:
    """torchrun sets MASTER_ADDR/PORT; under mpirun rank 0 picks them and mpi4py broadcasts them."""
    env = os.environ
    if launch.launcher == "torchrun" or ("MASTER_ADDR" in env and "MASTER_PORT" in env):
        return "env://"
    comm = _mpi_comm()
    if comm is not None:
        addr = None
        if launch.rank == 0:
            hosts = comm.gather(socket.gethostname(), root=0)
            addr = ("127.0.0.1" if len(set(hosts)) == 1 else socket.gethostbyname(socket.gethostname()), _free_port())
        else:
            comm.gather(socket.gethostname(), root=0)
        host, port = comm.bcast(addr, root=0)
        return f"tcp://{host}:{port}"
    job = env.get("OMPI_MCA_ess_base_jobid") or env.get("PMIX_NAMESPACE") or env.get("PMI_ID", "job")
    path = os.path.join(tempfile.gettempdir(), f"ckpt_eval_rdzv_{os.getuid()}_{job}".replace("@", "_"))
    return f"file://{path}"  # single host only; install mpi4py for multi-host runs


@dataclass
class Parallel:
    """This process's place in the tp x pp grid and the collectives between ranks."""

    mapping: Mapping
    rank: int = 0
    device: torch.device = torch.device("cpu")
    tp_group: object = None  # torch.distributed group of this rank's tensor-parallel peers

    @property
    def tp_size(self) -> int:
        return self.mapping.tp_size

    @property
    def tp_rank(self) -> int:
        return self.mapping.tp_rank(self.rank)

    @property
    def pp_rank(self) -> int:
        return self.mapping.pp_rank(self.rank)

    @property
    def is_first_stage(self) -> bool:
        return self.mapping.is_first_stage(self.rank)

    @property
    def is_last_stage(self) -> bool:
        return self.mapping.is_last_stage(self.rank)

    @property
    def sampler_rank(self) -> int:
        """The rank that samples the next tokens: tp rank 0 of the last stage."""
        return self.mapping.rank(0, self.mapping.pp_size - 1)

    @property
    def is_sampler(self) -> bool:
        return self.rank == self.sampler_rank

    @property
    def distributed(self) -> bool:
        return self.mapping.world_size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the tensor-parallel group (row-parallel outputs, vocab-parallel lookups)."""
        if self.tp_size > 1:
            dist.all_reduce(x, group=self.tp_group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenate every tp rank's ``x`` along ``dim`` (vocab-parallel logits, hidden-split embedding)."""
        if self.tp_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.tp_size)]
        dist.all_gather(parts, x.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=dim)

    def send_next(self, x: torch.Tensor) -> None:
        dist.send(x.contiguous(), dst=self.mapping.rank(self.tp_rank, self.pp_rank + 1))

    def recv_prev(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        x = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(x, src=self.mapping.rank(self.tp_rank, self.pp_rank - 1))
        return x

    def share(self, x: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """``x`` from the sampler rank, on every rank (others pass None)."""
        if self.distributed and not self.is_sampler:
            x = torch.empty(shape, dtype=dtype, device=self.device)
        if x is None:
            raise ValueError("share: the sampler rank passes the tensor it shares")
        if self.distributed:
            dist.broadcast(x.contiguous() if self.is_sampler else x, src=self.sampler_rank)
        return x

    def agree(self, error: str | None) -> None:
        """Collective check after a fallible step: if any rank failed, every rank raises its message."""
        if not self.distributed:
            if error:
                raise CheckpointError(error)
            return
        errors: list = [None] * self.mapping.world_size
        dist.all_gather_object(errors, error)
        for rank, err in enumerate(errors):
            if err:
                raise CheckpointError(err if rank == self.rank else f"rank {rank} failed: {err}")


def init_parallel(mapping: Mapping, device: str = "cpu") -> Parallel:
    """Join the process group the launcher started (gloo on CPU, NCCL on CUDA); one process needs none."""
    launch = detect_launch()
    check_world(mapping, launch)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", launch.local_rank % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if launch.world_size == 1:
        return Parallel(mapping, 0, dev)
    if not dist.is_initialized():
        if dev.type == "cuda":  # NVLink SHARP (multicast) off: captured steps replay plain NCCL rings/trees
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        atexit.register(shutdown)  # gloo/NCCL threads must stop before the interpreter does
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo",
            init_method=_init_method(launch),
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=_timeout(),
        )
    groups = [dist.new_group([mapping.rank(t, p) for t in range(mapping.tp_size)]) for p in range(mapping.pp_size)]
    return Parallel(mapping, launch.rank, dev, groups[mapping.pp_rank(launch.rank)])


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def abort(exit_code: int = 1) -> None:
    """Stop this rank now, and with it the whole job, so no peer waits for it (no hang)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if detect_launch().world_size > 1:
        comm = _mpi_comm() if "mpi4py" in sys.modules else None
        if comm is not None:
            comm.Abort(exit_code)
    os._exit(exit_code)
