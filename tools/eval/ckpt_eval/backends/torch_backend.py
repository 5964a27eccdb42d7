"""The ``torch`` backend: our model definition run from a checkpoint directory, on one or tp x pp ranks."""

from __future__ import annotations

import sys

import torch

from ckptfmt import (
    RANK_FILE,
    BackgroundChecksums,
    CheckpointError,
    check_checkpoint,
    load_config,
    model_spec,
)
from ckptfmt.reconcile import reconcile

from ..distributed import init_parallel
from ..model import Transformer
from ..torch_dtypes import TORCH_DTYPES
from ..weights import load_model
from .base import RunnerError


class TorchStepper:
    """This rank's slice of the model; pipeline stages hand hidden states to the next stage.

    With ``checksums`` the files are hashed against manifest.json in background threads while the model loads
    and runs; ``checksums`` holds the ``BackgroundChecksums`` that ``ModelRunner.verify`` waits for."""

    context_logits = True  # step(all_logits=True) returns every position's logits

    def __init__(self, directory: str, device: str = "cpu", checksums: bool = True, compile: bool | str = False):
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RunnerError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        config = reconcile(load_config(directory), directory)  # fields its tensors contradict, corrected
        self.config, self.spec = config, model_spec(config)
        self.par = init_parallel(config.mapping, device)
        if self.par.rank == 0:
            for note in config.notes:
                print(f"note: {note}", file=sys.stderr)
        error, self.checksums = None, None
        try:
            others = [RANK_FILE.format(rank=r) for r in range(config.mapping.world_size) if r != self.par.rank]
            self.checksums = BackgroundChecksums(directory, skip=others) if checksums else None  # their ranks
            check_checkpoint(directory, hash_files=False)  # sizes and structure now; sha256 in the background
            self.model = load_model(directory, config, self.par)
        except (CheckpointError, OSError, RuntimeError, ValueError) as err:
            error = str(err).splitlines()[0] if str(err) else type(err).__name__
        except BaseException:
            self.cancel_checksums()
            raise
        if error is not None:
            self.cancel_checksums()
        self.par.agree(error)
        self.dtype = TORCH_DTYPES[config.dtype]
        self.device = self.par.device
        self.vocab_size = self.spec.vocab_size
        self.max_positions = self.spec.max_position_embeddings
        self.is_sampler = self.par.is_sampler
        self.decode = self.model
        self.decode_path = "eager"
        self.rows = self.cache_rows = 0  # this batch's sequences, and the cache's rows (idle ones past ``rows``)
        self.captured: set[int] = set()  # batch sizes the compiled step has run (each one a graph of its own)
        if compile:
            self.decode, self.decode_path = decode_step(self.model, "auto" if compile is True else compile)
            if self.device.type == "cuda" and self.decode is not self.model:  # prompts through compiled layers
                self.model.compile_prompts()  # (on a CPU, and for pipeline stages, which run eager, they stay eager)

    def cancel_checksums(self) -> None:
        if self.checksums is not None:
            self.checksums.cancel()
            self.checksums = None

    def reset(self, batch: int, max_seq: int) -> None:
        self.rows, self.cache_rows = batch, self.padded_batch(batch)
        self.model.setup_cache(self.cache_rows, max_seq)

    def padded_batch(self, batch: int) -> int:
        """The batch to run ``batch`` sequences as. A compiled step is specialised to its batch size, and a new
        size costs a recompile (tens of seconds under torch.compile, e.g. for the last, partial batch of
        ``ckpt-summarize``), so a batch smaller than one already compiled runs as the smallest such with idle
        rows; their outputs are dropped. Batches the fused kernels take themselves are never padded."""
        if self.decode is self.model:
            return batch
        if batch <= getattr(self.decode, "max_batch", 0):  # FusedDecoder's own batches: one cheap graph each
            return batch
        larger = [n for n in self.captured if n > batch]
        if batch not in self.captured and larger:
            return min(larger)
        self.captured.add(batch)
        return batch

    def step(self, tokens: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, all_logits: bool = False):
        rows = tokens.shape[0]
        if self.cache_rows > rows:  # idle rows of token 0, dropped from the output (made outside inference mode,
            # as the caller's tensors are: an inference tensor would fail the compiled step's guards)
            idle = self.cache_rows - rows
            tokens = torch.cat([tokens, tokens.new_zeros(idle, tokens.shape[1])])
            pad = torch.cat([pad, pad.new_zeros(idle)])
        out = self.run_step(tokens, slots, pad, all_logits)
        return out if out is None or self.cache_rows == rows else out[:rows]

    @torch.inference_mode()
    def run_step(self, tokens: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, all_logits: bool):
        par = self.par
        b, t = tokens.shape
        x = tokens if par.is_first_stage else par.recv_prev((b, t, self.spec.hidden_size), self.dtype)
        run = self.decode if t == 1 and not all_logits else self.model
        try:
            out = run(x, slots, pad, last_only=not all_logits)
        except Exception as err:
            if t == 1 or not self.model.prompt_blocks:  # not a prompt through compiled layers
                raise
            # a prompt the compiler could not take: the eager layers from now on (the cache slots it wrote are
            # written again)
            cause: BaseException = err
            while (inner := getattr(cause, "inner_exception", None) or cause.__cause__) is not None:
                cause = inner  # the compiler's own error, not its wrapper's
            text = str(cause).splitlines()[0][:200] if str(cause) else ""
            print(f"note: --compile: prompts run eager ({type(cause).__name__}: {text})", file=sys.stderr)
            self.model.prompt_blocks = None
            out = self.model(x, slots, pad, last_only=not all_logits)
        if not par.is_last_stage:
            par.send_next(out)
            return None
        return out.clone() if par.is_sampler else None

    def share(self, x, shape, dtype):
        return self.par.share(x, shape, dtype)


def decode_step(model: Transformer, mode: str):
    """The one-token step for ``compile`` mode ``mode`` and a label of what it is:

    - "auto": the fused Triton kernels (``fused_decode``) for batch-1 steps where they cover the model on a
      GPU, else "reduce-overhead";
    - "fused": the fused kernels for batches up to ``MAX_BATCH``, an error where they do not cover the model;
    - any other string: a ``torch.compile`` mode ("reduce-overhead", "max-autotune", "default", ...).

    At tp > 1 both take the collectives into the step (the fused step's all-reduces, or torch.compile's
    traced ones), captured in the CUDA graph. Pipeline stages (pp > 1) run eager: "auto" says so on rank 0,
    the other modes are an error.
    """
    par = model.par
    if par.mapping.pp_size > 1:
        if mode != "auto":
            raise RunnerError(
                f"compile {mode!r}: the compiled and fused steps run tensor parallel only (pp {par.mapping.pp_size})"
            )
        if par.rank == 0:
            print(f"note: --compile: pipeline stages (pp {par.mapping.pp_size}) run eager", file=sys.stderr)
        return model, "eager"
    if mode == "auto" and next(model.parameters()).device.type != "cuda":
        mode = "reduce-overhead"  # the fused kernels are GPU kernels (on CPU only triton's interpreter runs them)
    if mode in ("auto", "fused"):
        from ..fused_decode import AUTO_MAX_BATCH, MAX_BATCH, FusedDecoder, unsupported

        reason = unsupported(model)
        if reason is None:
            limit = AUTO_MAX_BATCH if mode == "auto" else MAX_BATCH
            fallback = compile_decode(model, "reduce-overhead")
            return FusedDecoder(model, fallback=fallback, max_batch=limit), "fused"
        if mode == "fused":
            raise RunnerError(f"compile 'fused': {reason}")
        mode = "reduce-overhead"
    return compile_decode(model, mode), f"torch.compile {mode}"


def compile_decode(model: torch.nn.Module, mode: str):
    """The one-token decode step under ``torch.compile`` (``mode`` "reduce-overhead" captures CUDA graphs;
    "max-autotune" also benchmarks GEMM kernels at compile time). Coordinate-descent tuning of the generated
    kernels' launch parameters costs compile time once and pays at every step."""
    import torch._inductor.config as inductor

    inductor.coordinate_descent_tuning = True
    return torch.compile(model, mode=mode, fullgraph=True)


def open_backend(path: str, device: str = "cpu", **options) -> TorchStepper:
    return TorchStepper(path, device, **options)
