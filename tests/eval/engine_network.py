"""Test helper: the ``trt`` backend's ``EngineStepper`` on CPU, with the builder's own engine network (the
graph ``ckpt-build`` hands TensorRT, lowered to torch by ``ckpt_build.lower_torch``) standing in for TensorRT.

Everything of the backend but ``TrtExecutor`` runs for real: contract planning, the KV caches it allocates,
the alias bindings (the network's cache outputs must come back in the very buffers bound to the inputs),
step scheduling, the shared generate loop, and, under mpirun, the torch.distributed exchange between
pipeline stages (tensor-parallel ranks all-reduce through ``DistGroup`` over one tp group).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ckpt_build.contract import io_contract, rank_layout
from ckpt_build.limits import Limits, resolve_limits
from ckpt_build.lower_torch import TorchOps
from ckpt_build.network import define_rank_network
from ckpt_build.weights import RankWeights
from ckpt_eval.backends.trt_backend import EngineStepper, binding_addresses
from ckpt_eval.engine_plan import Buffer, StagePlan
from ckptfmt import RANK_FILE, RankFileReader, load_config
from ckptfmt.engine import BoundTo, EngineConfig


def engine_config(
    checkpoint_dir: str | os.PathLike,
    max_batch_size: int = 4,
    max_input_len: int = 48,
    max_output_len: int = 16,
    module: str = "tensorrt_rtx",
    version: str = "1.7.1.116",
    targets: tuple[str, ...] = ("sm80", "sm86"),
) -> EngineConfig:
    """The engine config ckpt-build would write for this checkpoint (its real io contract)."""
    config = load_config(checkpoint_dir)
    build = resolve_limits(
        config, Limits(max_batch_size=max_batch_size, max_input_len=max_input_len, max_output_len=max_output_len)
    )
    return EngineConfig(
        pretrained_config=config.to_dict(),
        build_config=build,
        io=io_contract(config, build),
        bound_to=BoundTo(
            module=module,
            module_version=version,
            compute_capabilities=list(targets),
            builder="ckpt-build",
            builder_version="test",
        ),
    )


class TpGroup:
    """``TorchOps`` collectives over one torch.distributed tensor-parallel group."""

    def __init__(self, group, size: int):
        self.group, self.size = group, size

    def all_reduce(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        torch.distributed.all_reduce(x, group=self.group)
        return x

    def all_gather(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=0)


class NetworkExecutor:
    """Runs the builder's network for one rank on the bound buffers, like an engine would."""

    def __init__(self, checkpoint_dir: Path, plan: StagePlan, par):
        config = load_config(checkpoint_dir)
        self.rank_layout = rank_layout(config, par.rank, plan.build)
        self.reader = RankFileReader(Path(checkpoint_dir) / RANK_FILE.format(rank=par.rank)).__enter__()
        self.weights = RankWeights(self.reader, self.rank_layout)
        self.group = TpGroup(par.tp_group, par.tp_size) if par.tp_size > 1 else None
        self.tp_rank = par.tp_rank
        self.constants: dict = {}
        self.steps = 0
        self.connected_ranks: int | None = None

    def connect(self, par) -> None:
        """Where ``TrtExecutor`` joins its tp group's NCCL communicator; here: prove it is called, once."""
        assert self.connected_ranks is None
        self.connected_ranks = par.tp_size

    def run(self, tensors: dict[str, torch.Tensor], bindings: list[Buffer]) -> None:
        addresses = {name: address for name, _, _, address in binding_addresses(bindings, tensors)}
        feed = {b.name: tensors[b.storage] for b in bindings if b.is_input}
        ops = TorchOps(feed, self.group, self.tp_rank, self.constants)
        define_rank_network(ops, self.rank_layout, self.weights)
        for b in bindings:
            if b.is_input:
                continue
            got = ops.outputs[b.name]
            if b.storage != b.name:  # aliased cache output: must be the input buffer itself
                if got.data_ptr() != addresses[b.name]:
                    raise AssertionError(f"{b.name}: network output is not in the bound buffer {b.storage}")
            else:
                tensors[b.name].copy_(got)
        self.steps += 1


def network_stepper(checkpoint_dir: str | os.PathLike, config: EngineConfig | None = None) -> EngineStepper:
    config = config or engine_config(checkpoint_dir)
    return EngineStepper(config, "cpu", lambda plan, par: NetworkExecutor(Path(checkpoint_dir), plan, par))
