"""The ``trt`` backend: this rank's TensorRT engine from an engine directory, stepped by the shared generate loop.

``EngineStepper`` is the ``Stepper`` of ``generate.py`` (same sampling, stopping and batching as the torch
backend): it plans buffers from the engine config's I/O contract (``engine_plan``), keeps the KV caches as
torch tensors that each step updates in place (cache outputs bound to their inputs' buffers), schedules each
step's inputs, and passes hidden states between pipeline stages. ``TrtExecutor`` runs one step of the plan
with TensorRT on a CUDA stream (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``); with
several tp ranks it hands every context an NCCL communicator (``set_communicator``).

Executed in this project's tests (CPU): the contract checks, buffer and alias planning, step scheduling, the
checks against ``bound_to`` (no GPU, no/other TensorRT, wrong version or compute capability), and
``EngineStepper`` end to end with the builder's own network executed on torch in place of TensorRT.
``TrtExecutor`` runs here only up to ``deserialize_cuda_engine`` (None without a GPU: one error line).
NOT executed anywhere yet: ``TrtExecutor`` past deserialization (binding, ``execute_async_v3``,
``set_communicator``), which needs a GPU the installed TensorRT supports; TensorRT-RTX refuses the H100s
this project could borrow.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from ckptfmt import ENGINE_FILE, BackgroundChecksums, CheckpointError
from ckptfmt.engine import (
    HIDDEN_IN,
    HIDDEN_OUT,
    INPUT_IDS,
    LAST_TOKEN_INDEX,
    LOGITS,
    POSITION_IDS,
    EngineConfig,
    check_engine_dir,
)
from ckptfmt.names import model_spec

from ..distributed import Parallel, check_world, detect_launch, init_parallel
from ..engine_plan import Buffer, StagePlan, schedule_step
from ..trt_runtime import check_bound_to, import_runtime, probe_runtime
from .base import RunnerError

if TYPE_CHECKING:
    from ..nccl import NcclCommunicator

log = logging.getLogger("ckpt_eval")


class Executor(Protocol):
    """Runs one step of a stage: binds every ``Buffer`` to ``tensors[buffer.storage]`` and writes the outputs.

    An executor may also have ``connect(par)``, called on every rank once all ranks have opened theirs.
    """

    def run(self, tensors: dict[str, torch.Tensor], bindings: list[Buffer]) -> None: ...


OpenExecutor = Callable[[StagePlan, Parallel], Executor]


def binding_addresses(bindings: list[Buffer], tensors: dict[str, torch.Tensor]) -> list[tuple[str, bool, tuple, int]]:
    """(name, is_input, shape, device address) per binding, after checking each buffer fits its binding.

    An aliased output gets its input's address: the engine updates the cache in place.
    """
    out = []
    for b in bindings:
        t = tensors.get(b.storage)
        if t is None:
            raise RunnerError(f"engine tensor {b.name}: no buffer {b.storage!r} allocated")
        if tuple(t.shape) != b.shape or t.dtype != b.dtype or not t.is_contiguous():
            raise RunnerError(
                f"engine tensor {b.name}: buffer {b.storage!r} is {t.dtype}{list(t.shape)}"
                f"{'' if t.is_contiguous() else ' (not contiguous)'}, binding needs {b.dtype}{list(b.shape)}"
            )
        out.append((b.name, b.is_input, b.shape, t.data_ptr()))
    return out


class EngineStepper:
    """This rank's engine behind the ``Stepper`` interface. ``open_executor`` makes the thing that runs a step
    (``TrtExecutor`` for real engines)."""

    context_logits = False  # the engine returns the last token's logits only (``scoring`` steps token by token)

    executor: Executor  # set by open_executor on every rank (``_agree``)

    def __init__(self, config: EngineConfig, device: str, open_executor: OpenExecutor, source: str = "config.json"):
        self.config = config
        ckpt = config.checkpoint_config
        self.spec = model_spec(ckpt)
        self.par = init_parallel(ckpt.mapping, device)
        self.plan = StagePlan(config, self.par.pp_rank, source)
        self._agree(lambda: setattr(self, "executor", open_executor(self.plan, self.par)))
        connect = getattr(self.executor, "connect", None)
        if connect is not None:  # collective: only once every rank has its engine
            self._agree(lambda: connect(self.par))
        self.device = self.par.device
        self.vocab_size = self.spec.vocab_size
        self.max_positions = self.spec.max_position_embeddings
        self.is_sampler = self.par.is_sampler
        self.caches: dict[str, torch.Tensor] = {}
        self.checksums: BackgroundChecksums | None = None  # the plans were verified before loading (open_backend)

    def _agree(self, action: Callable[[], object]) -> None:
        """Run a fallible step on every rank; if any rank failed, every rank raises (no rank left waiting)."""
        error = None
        try:
            action()
        except (RunnerError, CheckpointError, OSError, RuntimeError) as err:
            error = str(err).splitlines()[0] if str(err) else type(err).__name__
        self.par.agree(error)

    def reset(self, batch: int, max_seq: int) -> None:
        self.plan.check_batch(batch, max_seq)
        self.caches = {
            b.name: torch.zeros(b.shape, dtype=b.dtype, device=self.device) for b in self.plan.cache_buffers(batch)
        }

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, all_logits: bool = False):
        if all_logits:
            raise RunnerError(
                "context logits are not available from an engine (it returns the last token's "
                "logits only); use backend torch for output_context_logits"
            )
        plan, par = self.plan, self.par
        b, t = tokens.shape
        plan.check_seq(t)
        feed = schedule_step(tokens, slots, pad)
        tensors = dict(self.caches)
        if plan.first:
            tensors[INPUT_IDS] = feed.input_ids.to(self.device, plan.input_dtype(INPUT_IDS))
        else:
            tensors[HIDDEN_IN] = par.recv_prev((b, t, self.spec.hidden_size), plan.input_dtype(HIDDEN_IN))
        tensors[POSITION_IDS] = feed.position_ids.to(self.device, plan.input_dtype(POSITION_IDS))
        if plan.last:
            tensors[LAST_TOKEN_INDEX] = feed.last_token_index.to(self.device, plan.input_dtype(LAST_TOKEN_INDEX))
        bindings = plan.bindings(b, t)
        for out in bindings:
            if not out.is_input and out.storage == out.name:
                tensors[out.name] = torch.empty(out.shape, dtype=out.dtype, device=self.device)
        self.executor.run(tensors, bindings)
        if not plan.last:
            par.send_next(tensors[HIDDEN_OUT])
            return None
        return tensors[LOGITS][:, None].float() if self.is_sampler else None

    def share(self, x, shape, dtype):
        return self.par.share(x, shape, dtype)


# ---- TensorRT (needs a GPU; not executed in this project's tests) ----

TRT_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "BOOL": torch.bool,
}


def compare_engine_io(described: dict[str, tuple[str, str, str | None]], plan: StagePlan, path: str) -> None:
    """``described``: name -> (mode ``INPUT``/``OUTPUT``, TensorRT dtype name, aliased input or None), as the
    deserialized engine reports them; any difference from the contract is one ``RunnerError``."""
    bindings = plan.bindings(1, 1)
    if set(described) != {b.name for b in bindings}:
        extra = sorted(set(described) - {b.name for b in bindings})
        missing = sorted({b.name for b in bindings} - set(described))
        raise RunnerError(
            f"{path}: the plan's tensors differ from config.json's io contract (only in the plan: "
            f"{extra or '-'}; only in config.json: {missing or '-'}); rebuild the engine directory"
        )
    for b in bindings:
        mode, dtype, alias = described[b.name]
        want_alias = b.storage if b.storage != b.name else None
        if (
            (mode == "INPUT") != b.is_input
            or TRT_DTYPES.get(dtype) != b.dtype
            or (not b.is_input and alias != want_alias)
        ):
            raise RunnerError(
                f"{path}: tensor {b.name}: the plan has {mode} {dtype} aliasing {alias}, config.json "
                f"says {'input' if b.is_input else 'output'} {b.dtype} aliasing {want_alias}"
            )


def _make_logger(trt):
    # the base is the runtime module's logger class (tensorrt or tensorrt_rtx), untyped
    class Logger(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def last(self) -> str:
            return self.errors[-1] if self.errors else "no message from TensorRT"

    return Logger()


class TrtExecutor:
    """One rank's deserialized engine and execution context, run on its own CUDA stream."""

    def __init__(self, trt, engine_path: Path, plan: StagePlan, par: Parallel):
        self.trt, self.device = trt, par.device
        self.logger = _make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        with open(engine_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as plan_bytes:
            self.engine = self.runtime.deserialize_cuda_engine(plan_bytes)
        if self.engine is None:
            raise RunnerError(f"{engine_path}: TensorRT could not deserialize the plan ({self.logger.last()})")
        described = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            described[name] = (
                self.engine.get_tensor_mode(name).name,
                self.engine.get_tensor_dtype(name).name,
                self.engine.get_aliased_input_tensor(name)
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT
                else None,
            )
        compare_engine_io(described, plan, str(engine_path))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunnerError(f"{engine_path}: cannot create an execution context ({self.logger.last()})")
        self.stream = torch.cuda.Stream(self.device)
        self.communicator: NcclCommunicator | None = None
        self.engine_path = engine_path

    def connect(self, par: Parallel) -> None:
        """Tensor parallel: one NCCL communicator per tp group, handed to the context (collective call)."""
        if par.tp_size == 1:
            return
        from ..nccl import tp_communicator

        self.communicator = tp_communicator(par)
        if not self.context.set_communicator(self.communicator.capsule()):
            raise RunnerError(f"{self.engine_path}: set_communicator failed ({self.logger.last()})")

    def run(self, tensors: dict[str, torch.Tensor], bindings: list[Buffer]) -> None:
        ctx, stream = self.context, self.stream
        current = torch.cuda.current_stream(self.device)
        stream.wait_stream(current)  # inputs were written on the current stream
        for name, is_input, shape, address in binding_addresses(bindings, tensors):
            if is_input and not ctx.set_input_shape(name, shape):
                raise RunnerError(f"engine input {name}: shape {list(shape)} rejected ({self.logger.last()})")
            if not ctx.set_tensor_address(name, address):
                raise RunnerError(f"engine tensor {name}: address rejected ({self.logger.last()})")
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RunnerError(f"engine step failed ({self.logger.last()})")
        current.wait_stream(stream)  # outputs are read on the current stream


def open_backend(path: str, device: str = "cuda", checksums: bool = True, **options) -> EngineStepper:
    """Check the engine directory and what its plans are bound to before any TensorRT call, then load.

    With ``checksums`` the plans are hashed against manifest.json first: TensorRT deserializes only plans that
    are what ckpt-build wrote."""
    if options:
        raise RunnerError(f"backend trt takes no options (got {', '.join(options)})")
    config = check_engine_dir(path, hash_files=checksums)
    launch = detect_launch()
    check_world(config.checkpoint_config.mapping, launch)
    index = torch.device(device).index
    facts = probe_runtime(index if index is not None else launch.local_rank % max(torch.cuda.device_count(), 1))
    check_bound_to(config.bound_to, facts, path)
    if torch.device(device).type != "cuda":
        raise RunnerError(f"device {device!r}: backend trt runs engines on a CUDA device (use --device cuda)")
    trt = import_runtime(config.bound_to)
    engine_path = Path(path) / ENGINE_FILE.format(rank=launch.rank)
    return EngineStepper(
        config, device, lambda plan, par: TrtExecutor(trt, engine_path, plan, par), str(Path(path) / "config.json")
    )
