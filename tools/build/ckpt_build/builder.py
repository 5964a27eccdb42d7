"""Checkpoint directory -> engine directory: validate, build one plan per rank, write config + manifest."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ckptfmt import __version__ as ckptfmt_version
from ckptfmt.config import CheckpointConfig
from ckptfmt.constants import CONFIG_FILE, ENGINE_FILE, MANIFEST_FILE, RANK_FILE
from ckptfmt.engine import BoundTo, BuildConfig, EngineConfig
from ckptfmt.errors import CheckpointError
from ckptfmt.io import BackgroundChecksums, RankFileReader, atomic_output_dir, check_output_dir, write_manifest
from ckptfmt.validate import check_checkpoint
from ckptfmt.workers import exit_if_orphaned

from . import __version__
from .contract import RankLayout, io_contract, rank_layout
from .interrupts import run_cancellable
from .limits import Limits, refuse_quantized, supported_build
from .lower_trt import TrtBuildError, TrtOps
from .network import define_rank_network
from .output import OutputWriteError, check_written, output_errors, writing
from .progress import make_progress_monitor
from .trt_api import TrtModule, load_trt, resolve_targets
from .weights import RankWeights
from .workers import run_in_workers

log = logging.getLogger("ckpt_build")


@dataclass
class BuildRequest:
    checkpoint_dir: Path
    output_dir: Path
    limits: Limits
    backend: str = "auto"
    targets: list[str] | None = None
    workers: int = 1
    overwrite: bool = False
    skip_checksum: bool = False
    stop_at_once: bool = False  # command line: Ctrl-C waits <= interrupts.GRACE s for TensorRT, SIGTERM not at all


def make_logger(trt, quiet: Callable[[], bool] = lambda: False):
    """A TensorRT logger forwarding to ``logging`` that remembers the last error (and drops CPU-only noise).

    Once ``quiet()`` (the build was cancelled) its messages go to DEBUG: after "interrupted", nothing more.
    """

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if "cudaError 35" in msg or "CUDA driver version is insufficient" in msg:
                return
            if "BuildCanceled" in msg or quiet():  # we stopped it: the interrupt is reported, not this
                log.debug("TensorRT: %s", msg)
                return
            S = trt.ILogger.Severity
            if severity in (S.INTERNAL_ERROR, S.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == S.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def last_error(self) -> str:
            return self.errors[-1] if self.errors else ""

    return Logger()


def _stream_writer(trt, path: Path, failed: threading.Event | None = None):
    class FileWriter(trt.IStreamWriter):
        """Streams the plan to disk (no in-memory copy of the whole plan), hashing as it goes.

        An ``OSError`` (full disk, file size limit) is kept in ``error`` and answered with a short write, which
        stops TensorRT: an exception raised here would be printed by the bindings with a stack and swallowed.
        """

        def __init__(self):
            trt.IStreamWriter.__init__(self)
            self.file = open(path, "wb")  # noqa: SIM115 (closed by the caller)
            self.sha, self.size = hashlib.sha256(), 0
            self.error: OSError | None = None

        def write(self, data) -> int:
            if self.error is not None:
                return 0
            try:
                self.file.write(data)
            except OSError as err:
                self._failed(err)
                return 0
            self.sha.update(data)
            self.size += len(data)
            return len(data)

        def close(self) -> None:
            try:
                self.file.close()  # flushes the buffer: may fail too
            except OSError as err:
                self._failed(err)

        def _failed(self, err: OSError) -> None:
            self.error = self.error or err
            if failed is not None:
                failed.set()

    return FileWriter()


@contextlib.contextmanager
def release_mapped_pages(reader: RankFileReader, interval: float = 0.02) -> Iterator[None]:
    """While TensorRT builds, drop the rank file's pages from this process every ``interval`` seconds.

    The mapping is read-only and file-backed: a dropped page that TensorRT reads again faults back in from
    the page cache with the same bytes, so this is always correct. Without it the whole checkpoint stays
    mapped into the process (RSS) next to TensorRT's own copy of the weights.
    """
    if not reader.release_pages():  # False: file not mapped yet, or no madvise on this platform
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            reader.release_pages()

    thread = threading.Thread(target=loop, name="release-pages", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def build_rank(
    module: TrtModule,
    config: CheckpointConfig,
    rank: int,
    build: BuildConfig,
    checkpoint_dir: Path,
    targets: list[str],
    engine_path: Path,
    stop_at_once: bool = False,
) -> dict:
    """Build one rank's plan into ``engine_path``; returns its manifest entry (size, sha256) and seconds.

    Ctrl-C stops TensorRT at its next step and is then raised here as ``KeyboardInterrupt``; with
    ``stop_at_once`` it is raised after at most ``interrupts.GRACE`` seconds, SIGTERM at once, and TensorRT
    may still be running (``interrupts.still_running``).
    """
    start = time.perf_counter()
    layout, cancel = rank_layout(config, rank, build), threading.Event()
    dims = io_contract(config, build).dims
    ok, size, sha, error = run_cancellable(
        lambda: _build_plan(module, layout, dims, checkpoint_dir, targets, engine_path, cancel.is_set),
        cancel,
        f"rank {rank}",
        stop_at_once,
    )
    if not ok or size == 0:
        raise TrtBuildError(f"rank {rank}: TensorRT build failed: {error or 'no plan returned'}")
    seconds = time.perf_counter() - start
    log.info("rank %d: %s (%.1f MB) in %.1f s", rank, engine_path.name, size / 1e6, seconds)
    return {"size": size, "sha256": sha, "seconds": seconds}


def _build_plan(
    module: TrtModule,
    layout: RankLayout,
    dims: dict[str, list[int]],
    checkpoint_dir: Path,
    targets: list[str],
    engine_path: Path,
    cancelled: Callable[[], bool],
) -> tuple[bool, int, str, str]:
    """Define the rank's network and stream its plan to ``engine_path``: (ok, size, sha256, TensorRT's error)."""
    trt, rank = module.trt, layout.rank
    write_failed = threading.Event()  # TensorRT's messages about the short write it got are not the news
    logger = make_logger(trt, quiet=lambda: cancelled() or write_failed.is_set())
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    builder_config = builder.create_builder_config()
    module.set_targets(builder_config, targets)
    if hasattr(trt, "IProgressMonitor"):  # TensorRT >= 10.0 and TensorRT-RTX: progress lines and Ctrl-C
        builder_config.progress_monitor = make_progress_monitor(trt, f"rank {rank}", cancelled)
    profile = builder.create_optimization_profile()
    ops = TrtOps(trt, network, profile, dims, logger)
    ops.tp_size = layout.tp_size
    with RankFileReader(checkpoint_dir / RANK_FILE.format(rank=rank)) as reader:
        define_rank_network(ops, layout, RankWeights(reader, layout))
        if builder_config.add_optimization_profile(profile) < 0:
            raise TrtBuildError(f"rank {rank}: invalid optimization profile: {logger.last_error()}")
        if cancelled():
            return False, 0, "", "interrupted"
        log.info("rank %d: network defined (%d layers); TensorRT builds the plan", rank, network.num_layers)
        try:
            writer = _stream_writer(trt, engine_path, write_failed)
        except OSError as err:
            raise OutputWriteError.of(engine_path.name, err) from None
        try:
            with release_mapped_pages(reader):
                ok = module.serialize(builder, network, builder_config, writer)
        finally:
            writer.close()
        del network, ops  # release the weight references before the next rank
    if writer.error is not None:  # full disk, file size limit: named as such, not as a failed TensorRT build
        raise OutputWriteError.of(engine_path.name, writer.error)
    return ok, writer.size, writer.sha.hexdigest(), logger.last_error()


def _build_rank_in_worker(args: tuple) -> dict:
    exit_if_orphaned()  # between ranks: nobody would use this one
    backend, config_dict, rank, build, checkpoint_dir, targets, engine_path, level = args
    logging.basicConfig(level=level, format="[ckpt-build] %(levelname)s %(message)s")
    module = load_trt(backend)
    config = CheckpointConfig.from_dict(config_dict)
    return build_rank(module, config, rank, build, checkpoint_dir, targets, engine_path)


def check_model(request: BuildRequest) -> tuple[CheckpointConfig, BuildConfig]:
    """The checks that need no TensorRT: checkpoint, support, limits (``--finalize`` stops here)."""
    refuse_quantized(request.checkpoint_dir)  # before its scales and 8-bit tensors fail the validation
    config = check_checkpoint(request.checkpoint_dir, hash_files=False)
    for note in config.notes:  # what load_config corrected (e.g. a ModelOpt GPT-2's position_embedding_type)
        log.warning("%s", note)
    build = supported_build(config, request.limits)
    return config, build


def prepare(request: BuildRequest) -> tuple[TrtModule, CheckpointConfig, BuildConfig, list[str]]:
    """Every check that can fail before building: checkpoint, support, limits, TensorRT module, targets."""
    config, build = check_model(request)
    module = load_trt(request.backend)
    q = config.quantization
    needs = [config.dtype] + ([q.weight_only] if q.weight_only else [])
    needs += ["fp8"] if q.scheme == "fp8" or q.kv_cache == "fp8" else []  # e4m3 Q/DQ: SM89+ (trt_api.MIN_SM)
    targets = resolve_targets(module, request.targets, needs)
    if not targets:
        raise CheckpointError(f"--target: no target of {module.name} supports {', '.join(needs)}")
    check_output_dir(request.output_dir, request.overwrite, inputs=[request.checkpoint_dir])
    if request.workers < 1:
        raise CheckpointError(f"--workers: must be >= 1 (got {request.workers})")
    return module, config, build, targets


def bound_to(module: TrtModule, targets: list[str]) -> BoundTo:
    return BoundTo(
        module=module.name,
        module_version=module.version,
        compute_capabilities=targets,
        builder="ckpt-build",
        builder_version=f"{__version__} (ckptfmt {ckptfmt_version})",
    )


def engine_config(config: CheckpointConfig, build: BuildConfig, bound: BoundTo) -> EngineConfig:
    """What ``config.json`` of the engine directory says (one place for plain builds and ``--finalize``)."""
    return EngineConfig(
        pretrained_config=config.to_dict(), build_config=build, io=io_contract(config, build), bound_to=bound
    )


def build_engines(request: BuildRequest) -> EngineConfig:
    """Build every rank's engine into ``request.output_dir`` (atomically: all or nothing)."""
    module, config, build, targets = prepare(request)
    world = config.mapping.world_size
    engine = engine_config(config, build, bound_to(module, targets))
    log.info(
        "building %d rank(s) of %s with %s %s for %s",
        world,
        config.architecture,
        module.name,
        module.version,
        ",".join(targets),
    )
    checksums = None if request.skip_checksum else BackgroundChecksums(request.checkpoint_dir)
    try:
        _build_into(request, module, config, build, targets, engine, checksums)
    finally:
        if checksums is not None:
            checksums.cancel()  # a no-op once wait() returned
    return engine


def _build_into(
    request: BuildRequest,
    module: TrtModule,
    config: CheckpointConfig,
    build: BuildConfig,
    targets: list[str],
    engine: EngineConfig,
    checksums: BackgroundChecksums | None,
) -> None:
    """``_write_engine_dir``, with every ``OSError`` of the output (full disk, read-only parent) in one line."""
    sizes: list[int] = []  # the plans' sizes once they are built: what the engines need
    with output_errors(request.output_dir, request.checkpoint_dir, sizes):
        _write_engine_dir(request, module, config, build, targets, engine, checksums, sizes)


def _write_engine_dir(
    request: BuildRequest,
    module: TrtModule,
    config: CheckpointConfig,
    build: BuildConfig,
    targets: list[str],
    engine: EngineConfig,
    checksums: BackgroundChecksums | None,
    sizes: list[int],
) -> None:
    """Every rank's plan, the engine config and the manifest into a temp dir, published when all checks pass."""
    world = config.mapping.world_size
    with atomic_output_dir(request.output_dir, overwrite=request.overwrite, inputs=[request.checkpoint_dir]) as tmp:
        jobs = [
            (
                request.backend if request.backend != "auto" else module.name,
                config.to_dict(),
                rank,
                build,
                request.checkpoint_dir,
                targets,
                tmp / ENGINE_FILE.format(rank=rank),
                log.getEffectiveLevel(),
            )
            for rank in range(world)
        ]
        if request.workers > 1 and world > 1:
            results = run_in_workers(_build_rank_in_worker, jobs, min(request.workers, world))
        else:
            results = [
                build_rank(module, config, rank, build, request.checkpoint_dir, targets, job[6], request.stop_at_once)
                for rank, job in zip(range(world), jobs)
            ]
        sizes.extend(res["size"] for res in results)
        plans = {
            ENGINE_FILE.format(rank=r): {"size": res["size"], "sha256": res["sha256"]} for r, res in enumerate(results)
        }
        writing(CONFIG_FILE, engine.save, tmp)
        sizes.append((tmp / CONFIG_FILE).stat().st_size)
        writing(MANIFEST_FILE, write_manifest, tmp, plans)  # every file: the plans (hashed as they streamed), config
        check_written(tmp)
        if checksums is not None:
            checksums.wait()  # the checkpoint's bytes match its manifest, else nothing is published
