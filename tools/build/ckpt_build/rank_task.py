"""``ckpt-build --rank R``: one rank's engine into the staging area, as one task of a cluster job."""

from __future__ import annotations

import hashlib
import logging
import resource
import socket
from pathlib import Path

from ckptfmt.constants import MANIFEST_FILE, RANK_FILE
from ckptfmt.errors import CheckpointError
from ckptfmt.io import BackgroundChecksums

from .builder import BuildRequest, bound_to, build_rank, engine_config, prepare
from .output import output_errors
from .staging import StagingArea, new_token, task_label

log = logging.getLogger("ckpt_build")


def checkpoint_identity(checkpoint_dir: Path) -> str | None:
    """sha256 of the checkpoint's manifest.json (it lists every file's sha256), None without one."""
    path = checkpoint_dir / MANIFEST_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def build_staged_rank(request: BuildRequest, rank: int) -> dict:
    """Build rank ``rank`` into the staging area beside ``request.output_dir``; returns its record.

    The plan streams to ``….engine.partial`` (removed on any error or interrupt), is renamed when complete and
    the checkpoint files this rank reads matched their sha256, and only then is the record written.
    """
    module, config, build, targets = prepare(request)
    world = config.mapping.world_size
    if not 0 <= rank < world:
        raise CheckpointError(f"--rank {rank}: the checkpoint has {world} rank(s), 0 to {world - 1}")
    engine = engine_config(config, build, bound_to(module, targets))
    area, token = StagingArea(request.output_dir), new_token()
    plan = area.plan_path(rank, token)
    partial = plan.with_name(plan.name + ".partial")
    log.info("rank %d of %d: building into %s", rank, world, area.path)
    others = [RANK_FILE.format(rank=r) for r in range(world) if r != rank]  # their own tasks hash them
    checksums = None if request.skip_checksum else BackgroundChecksums(request.checkpoint_dir, skip=others)
    sizes: list[int] = []
    try:
        with output_errors(request.output_dir, request.checkpoint_dir, sizes):
            area.path.mkdir(parents=True, exist_ok=True)
            try:
                result = build_rank(
                    module, config, rank, build, request.checkpoint_dir, targets, partial, request.stop_at_once
                )
                sizes.append(result["size"])
                if checksums is not None:
                    checksums.wait()  # a rank built from a corrupt file is not staged
                partial.rename(plan)
                data = {
                    "world_size": world,
                    "size": result["size"],
                    "sha256": result["sha256"],
                    "seconds": round(result["seconds"], 3),
                    "peak_rss_bytes": peak_rss_bytes(),
                    "host": socket.gethostname(),
                    "task": task_label(),
                    "checkpoint_manifest_sha256": checkpoint_identity(request.checkpoint_dir),
                    "engine": engine.to_dict(),
                }
                area.publish_record(rank, token, data)
            except BaseException:
                partial.unlink(missing_ok=True)
                plan.unlink(missing_ok=True)
                raise
    finally:
        if checksums is not None:
            checksums.cancel()
    return {"rank": rank, "plan": plan, **data}
