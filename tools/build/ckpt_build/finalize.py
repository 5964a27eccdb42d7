"""``ckpt-build --finalize``: check the staged ranks, then publish the engine directory atomically.

Refused in one line: a rank missing or built twice, a plan whose size is not the recorded one, ranks built
by different TensorRT versions or for different targets, a rank built with other settings than these flags
give (limits, dtype of the logits, the checkpoint's config) or from a checkpoint that changed since.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from ckptfmt.config import CheckpointConfig
from ckptfmt.constants import CONFIG_FILE, ENGINE_FILE, MANIFEST_FILE
from ckptfmt.engine import BoundTo, BuildConfig, EngineConfig
from ckptfmt.errors import CheckpointError
from ckptfmt.io import atomic_output_dir, check_output_dir, write_manifest

from .builder import BuildRequest, check_model, engine_config
from .output import check_written, output_errors, writing
from .rank_task import checkpoint_identity
from .staging import RankRecord, StagingArea


def _ranks(numbers: list[int]) -> str:
    return f"rank {numbers[0]}" if len(numbers) == 1 else "ranks " + ", ".join(map(str, numbers))


def one_record_per_rank(area: StagingArea, world: int) -> list[RankRecord]:
    """Exactly one finished record for each rank ``0 … world-1``, in rank order."""
    records, partials = area.records(), area.partials()
    extra = sorted(r for r in records if r >= world)
    if extra:
        raise CheckpointError(
            f"{area.path}: {_ranks(extra)} staged but the checkpoint has {world} rank(s); "
            "finalize with the checkpoint the ranks were built from"
        )
    twice = [r for r in sorted(records) if len(records[r]) > 1]
    if twice:
        r = twice[0]
        who = "; ".join(f"{rec.task}: {rec.path.name}" for rec in records[r])
        raise CheckpointError(
            f"{area.path}: rank {r} built twice ({who}); delete the record and plan of the build to drop"
        )
    missing = [r for r in range(world) if r not in records]
    if missing:
        stopped = [r for r in missing if r in partials]
        why = f" ({_ranks(stopped)}: a build stopped unfinished)" if stopped else ""
        raise CheckpointError(
            f"{area.path}: {_ranks(missing)} of {world} missing{why}; build with --rank and finalize again"
        )
    return [records[r][0] for r in range(world)]


def _difference(a: object, b: object, where: str = "") -> tuple[str, object, object] | None:
    """The first place where two JSON values differ: (dotted path, a's value, b's value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else (where, a, b)


def _built_by(bound: dict) -> str:
    return f"{bound.get('module')} {bound.get('module_version')} for {','.join(bound.get('compute_capabilities', []))}"


def check_consistent(
    request: BuildRequest, config: CheckpointConfig, build: BuildConfig, chosen: list[RankRecord]
) -> EngineConfig:
    """Every rank built by one TensorRT for one target set, with the settings these flags give; the engine config."""
    first = chosen[0].data["engine"]["bound_to"]
    for rec in chosen[1:]:
        bound = rec.data["engine"]["bound_to"]
        if bound != first:
            raise CheckpointError(
                f"{rec.path}: rank {rec.rank} was built with {_built_by(bound)} ({rec.task}), rank 0 with "
                f"{_built_by(first)}; build every rank with one TensorRT version and --target"
            )
    try:
        bound = BoundTo(**first)
    except TypeError:
        raise CheckpointError(f"{chosen[0].path}: engine.bound_to: malformed; build rank 0 again") from None
    if request.targets and sorted(request.targets) != sorted(bound.compute_capabilities):
        raise CheckpointError(f"--target {','.join(request.targets)}: the ranks were built for {_built_by(first)}")
    if request.backend not in ("auto", bound.module):
        raise CheckpointError(f"--backend {request.backend}: the ranks were built with {_built_by(first)}")
    engine = engine_config(config, build, bound)
    expected = json.loads(json.dumps(engine.to_dict()))
    identity = checkpoint_identity(request.checkpoint_dir)
    for rec in chosen:
        if rec.data.get("checkpoint_manifest_sha256") != identity:
            raise CheckpointError(
                f"{rec.path}: rank {rec.rank} was built from another version of {request.checkpoint_dir} "
                f"(its {MANIFEST_FILE} differs); build that rank again"
            )
        found = _difference(rec.data["engine"], expected)
        if found:
            where, staged, wanted = found
            raise CheckpointError(
                f"{rec.path}: rank {rec.rank} was built with {where} = {json.dumps(staged)}, these flags give "
                f"{json.dumps(wanted)}; build every rank and finalize with the same flags"
            )
    return engine


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (the staged plan stays intact if publishing fails), a copy where links are not supported."""
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copyfile(src, dst)


def finalize(request: BuildRequest) -> tuple[EngineConfig, list[RankRecord]]:
    """Check the staged ranks and publish ``request.output_dir``; the staging area is removed afterwards."""
    check_output_dir(request.output_dir, request.overwrite, inputs=[request.checkpoint_dir])
    area = StagingArea(request.output_dir)
    if not area.path.is_dir():
        raise CheckpointError(
            f"{area.path}: no staging area for {request.output_dir}; build every rank with --rank R first"
        )
    config, build = check_model(request)
    chosen = one_record_per_rank(area, config.mapping.world_size)
    for rec in chosen:
        size = rec.plan.stat().st_size if rec.plan.is_file() else None
        if size != rec.data.get("size"):
            found = "missing" if size is None else f"{size} bytes"
            raise CheckpointError(
                f"{rec.plan}: {found}, its record says {rec.data.get('size')} bytes; build rank {rec.rank} again"
            )
    engine = check_consistent(request, config, build, chosen)
    sizes = [rec.data["size"] for rec in chosen]
    with (
        output_errors(request.output_dir, request.checkpoint_dir, sizes),
        atomic_output_dir(request.output_dir, overwrite=request.overwrite, inputs=[request.checkpoint_dir]) as tmp,
    ):
        plans = {}
        for rec in chosen:
            name = ENGINE_FILE.format(rank=rec.rank)
            writing(name, _link_or_copy, rec.plan, tmp / name)
            plans[name] = {"size": rec.data["size"], "sha256": rec.data["sha256"]}
        writing(CONFIG_FILE, engine.save, tmp)
        writing(MANIFEST_FILE, write_manifest, tmp, plans)
        check_written(tmp)
    area.remove()
    return engine, chosen
