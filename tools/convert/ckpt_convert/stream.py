"""The source-independent conversion run: plan, then read -> transform -> shard -> write, one tensor at a time.

``convert_checkpoint`` takes a source opener, a mapping table and the target ``CheckpointConfig``; the
rank files are streamed through ``RankFileWriter`` into a temp dir that is renamed into place only
when config, every rank file and the manifest (written last) are complete.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptfmt import (
    CONFIG_FILE,
    DTYPES,
    RANK_FILE,
    BackgroundRankFileWriter,
    CheckpointConfig,
    CheckpointError,
    atomic_output_dir,
    expected_tensors,
    write_manifest,
)
from ckptfmt.entry import deferred_interrupts
from ckptfmt.io import check_output_dir
from ckptfmt.sharding import shard
from ckptfmt.workers import exit_if_orphaned, init_worker, stop_workers

from .producer import TensorProducer, canonical_name, check_coverage, check_quantizable
from .rules import Table
from .source_guard import check_all_unchanged
from .sources import AnyTensorSource

SourceOpener = Callable[[], AnyTensorSource]  # picklable (module-level function or functools.partial)


@dataclass(frozen=True)
class RankGroup:
    """Ranks converted together in one pass over the source (the tp ranks of one pipeline stage)."""

    opener: SourceOpener
    table: Table
    config: dict
    ranks: tuple[int, ...]
    directory: Path


@dataclass
class Summary:
    ranks: int
    tensors: int
    bytes: int
    seconds: float
    peak_rss_mb: float

    def line(self, output_dir: str | Path) -> str:
        return (
            f"{output_dir}: {self.ranks} rank file(s), {self.tensors} tensors, {self.bytes / 1e6:.1f} MB "
            f"in {self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB"
        )


def convert_ranks(group: RankGroup, progress: Callable[[int], None]) -> dict[str, dict]:
    """Write the rank files of ``group``; returns their manifest entries.

    The next tensor is read and transformed in a background thread while the current one is sharded,
    hashed and written, so reading overlaps writing; at most two full tensors are in memory.
    """
    config = CheckpointConfig.from_dict(group.config)
    specs = {r: expected_tensors(config, r) for r in group.ranks}
    order = list(specs[group.ranks[0]])
    parts = [canonical_name(config, group.ranks[0], name) for name in order]
    writers: dict[int, BackgroundRankFileWriter] = {}
    upcoming = None
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    with group.opener() as source:
        producer = TensorProducer(group.table, source, config)
        try:
            for r in group.ranks:
                file_specs = {n: (_np_dtype(s.dtype), s.shape) for n, s in specs[r].items()}
                writers[r] = BackgroundRankFileWriter(group.directory / RANK_FILE.format(rank=r), file_specs)
            upcoming = prefetch.submit(producer.get, *parts[0]) if order else None
            for index, name in enumerate(order):
                assert upcoming is not None  # submitted for every name of order
                full = upcoming.result()
                upcoming = prefetch.submit(producer.get, *parts[index + 1]) if index + 1 < len(order) else None
                for rank, writer in writers.items():
                    writer.write(name, shard(name, full, config, rank))
                del full
                progress(len(writers))
            for writer in writers.values():
                writer.finish()  # all files drain and sync in parallel
            return {w.path.name: w.close() for w in writers.values()}
        finally:
            with deferred_interrupts():  # a second Ctrl-C must not cut the cleanup short (files left open)
                if upcoming is not None:
                    upcoming.cancel()
                for w in writers.values():
                    w.__exit__(RuntimeError, None, None)  # closes the file if close() did not run
                prefetch.shutdown()


def _np_dtype(name: str) -> np.dtype:
    return DTYPES.get(name, None) or np.dtype(name)


def rank_groups(config: CheckpointConfig, workers: int) -> list[tuple[int, ...]]:
    """One group per pipeline stage (each source tensor read once for all its tp ranks); one per rank when
    there are more workers than stages."""
    m = config.mapping
    stages = [tuple(m.rank(t, p) for t in range(m.tp_size)) for p in range(m.pp_size)]
    if workers > len(stages):
        return [(r,) for stage in stages for r in stage]
    return stages


def convert_checkpoint(
    opener: SourceOpener,
    table: Table,
    config: CheckpointConfig,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    workers: int = 1,
    quiet: bool = False,
    label: str = "source",
    extra_files: dict[str, Path] | None = None,
    inputs: Sequence[Path] = (),
) -> Summary:
    """Check everything that can be checked up front, then stream the checkpoint into ``output_dir``.

    ``label`` names the source in error messages (e.g. the model directory). ``extra_files`` maps paths
    inside the output (e.g. ``tokenizer/tokenizer.json``) to files copied there before the manifest. ``inputs``
    (the source paths) may be neither replaced by the output nor contain it.
    """
    start = time.monotonic()
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite, inputs)
    config.check(f"{label}: converted config")
    with opener() as source:
        source.open_all()  # every file exists and has a sound header
        check_coverage(table, source, config)
        fingerprints = source.fingerprints()  # compared again before publishing
    check_quantizable(config)
    groups = rank_groups(config, workers)
    total = sum(len(expected_tensors(config, r)) for r in range(config.mapping.world_size))
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs) as tmp, _progress_bar(total, quiet) as bar:
        jobs = [RankGroup(opener, table, config.to_dict(), ranks, tmp) for ranks in groups]
        entries = _run(jobs, workers, bar.update)
        _copy_extra_files(extra_files or {}, tmp, output_dir)
        check_all_unchanged(fingerprints)
        _writing(output_dir, config.save, tmp / CONFIG_FILE)
        _writing(output_dir, write_manifest, tmp, entries)
        size = sum(e["size"] for e in entries.values())
    return Summary(config.mapping.world_size, total, size, time.monotonic() - start, peak_rss_mb())


def _copy_extra_files(files: dict[str, Path], tmp: Path, output_dir: Path) -> None:
    """Copy ``files`` (path inside the output -> source file); a read error names the source, a write error
    (disk full, quota) the output."""
    for rel, src in files.items():
        try:
            fsrc = open(src, "rb")  # noqa: SIM115 (closed below; a read error is the source's)
        except OSError as err:
            raise CheckpointError(f"{src}: cannot read ({err.strerror})") from None
        with fsrc:
            _writing(output_dir, _copy_into, fsrc, tmp / rel)


def _copy_into(fsrc, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as fdst:
        shutil.copyfileobj(fsrc, fdst, 1 << 20)


def _writing(output_dir: Path, write: Callable, *args) -> None:
    """Call ``write(*args)``; an ``OSError`` becomes one line naming the output directory."""
    try:
        write(*args)
    except OSError as err:
        raise CheckpointError(
            f"writing {output_dir}: {err.strerror or err} (free space on the output's disk or choose another "
            "--output_dir)"
        ) from None


def _run(jobs: list[RankGroup], workers: int, progress: Callable[[int], None]) -> dict[str, dict]:
    if workers <= 1 or len(jobs) == 1:
        entries: dict[str, dict] = {}
        for job in jobs:
            entries.update(convert_ranks(job, progress))
        return entries
    return _run_in_processes(jobs, min(workers, len(jobs)), progress)


def _run_in_processes(jobs: list[RankGroup], workers: int, progress: Callable[[int], None]) -> dict[str, dict]:
    ctx = multiprocessing.get_context("spawn")
    entries: dict[str, dict] = {}
    pool = None
    try:
        with _children_ignore_sigint():
            queue = ctx.Queue()
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue, os.getpid()))
            pending = {pool.submit(_convert_in_worker, job) for job in jobs}  # spawns the workers
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
            for future in done:
                entries.update(future.result())  # re-raises the worker's error
        _drain(queue, progress)
    except BaseException:
        with deferred_interrupts():  # a second Ctrl-C must not leave workers writing into the temp dir
            stop_workers(pool)
        raise
    pool.shutdown()
    return entries


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT from their first instruction (an ignored signal stays
    ignored across exec): Ctrl-C at a terminal reaches the whole process group, and a worker still importing
    would print a traceback. The parent handles it and stops them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_QUEUE = None


def _init_worker(queue, parent: int) -> None:
    """Worker setup: progress goes to ``queue``; Ctrl-C is the parent's, and the worker dies with its parent
    (SIGKILL included: ``ckptfmt.workers``)."""
    global _QUEUE
    _QUEUE = queue
    init_worker(parent)


def _progress_in_worker(n: int) -> None:
    exit_if_orphaned()  # between tensors
    assert _QUEUE is not None  # set by _init_worker
    _QUEUE.put(n)


def _convert_in_worker(job: RankGroup) -> dict[str, dict]:
    return convert_ranks(job, _progress_in_worker)


def _drain(queue, progress: Callable[[int], None]) -> None:
    while True:
        try:
            progress(queue.get_nowait())
        except Exception:  # queue.Empty
            return


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its finished workers (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024
    return max(own, children) * scale


class _progress_bar:  # noqa: N801 (used like a function)
    """tqdm on a terminal; a no-op when quiet or when stderr is not a TTY."""

    def __init__(self, total: int, quiet: bool):
        self._bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="tensor", desc="converting", leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> _progress_bar:
        return self

    def __exit__(self, *_) -> None:
        if self._bar is not None:
            self._bar.close()
