"""The staging area of a build spread over tasks: ``.NAME.ranks/`` beside the engine directory ``NAME``.

Each ``ckpt-build --rank R`` task writes ``rankR.TOKEN.engine`` (as ``….partial`` while TensorRT streams it)
and then ``rankR.TOKEN.json``, its record: the plan's size and sha256, the engine config the task built for,
where and how long it ran. ``TOKEN`` is unique per task, so tasks never write the same file and a rank built
twice shows up as two records. ``--finalize`` reads the records; nothing here decides what is consistent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from ckptfmt.errors import CheckpointError

RECORD_FORMAT = "ckpt-build-rank/1"
_NAME = re.compile(r"rank(\d+)\.([A-Za-z0-9_-]+)\.(engine|json|engine\.partial)")


def staging_dir(output_dir: Path) -> Path:
    """``.NAME.ranks`` beside ``NAME``: same file system (plans are linked, not copied), never published."""
    return output_dir.parent / f".{output_dir.name}.ranks"


def task_label() -> str:
    """Who built a rank, for messages: the Slurm array task, the Kubernetes pod, else host and pid."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"slurm job {env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
    if "SLURM_JOB_ID" in env:
        return f"slurm job {env['SLURM_JOB_ID']}"
    if "JOB_COMPLETION_INDEX" in env:
        return f"pod {socket.gethostname()} (index {env['JOB_COMPLETION_INDEX']})"
    return f"{socket.gethostname()} pid {os.getpid()}"


def new_token() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RankRecord:
    """One finished rank: its record file and what it says."""

    rank: int
    path: Path
    data: dict

    @property
    def plan(self) -> Path:
        return self.path.with_name(self.data["plan"])

    @property
    def task(self) -> str:
        return str(self.data.get("task", "?"))


def _well_formed(data: object, rank: int, plan: str) -> bool:
    """The fields ``--finalize`` reads, with their types (the engine config itself is compared field by field);
    the plan is the one beside the record, of its rank and task."""
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("rank") != rank:
        return False
    engine = data.get("engine")
    types: dict[str, type | tuple[type, ...]] = {"plan": str, "size": int, "sha256": str, "seconds": (int, float)}
    return (
        all(isinstance(data.get(k), t) for k, t in types.items())
        and isinstance(engine, dict)
        and isinstance(engine.get("bound_to"), dict)
        and data["plan"] == plan
    )


class StagingArea:
    """The files of one staging directory: where a rank task writes, what ``--finalize`` reads."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.path = staging_dir(output_dir)

    def plan_path(self, rank: int, token: str) -> Path:
        return self.path / f"rank{rank}.{token}.engine"

    def publish_record(self, rank: int, token: str, data: dict) -> Path:
        """Write the record last (temp name, then rename): a record means its plan is complete."""
        final = self.path / f"rank{rank}.{token}.json"
        tmp = final.with_name(f".{final.name}.tmp")
        body = {"format": RECORD_FORMAT, "rank": rank, "plan": self.plan_path(rank, token).name, **data}
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(body, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def _ours(self) -> list[tuple[Path, re.Match]]:
        if not self.path.is_dir():
            return []
        return [(p, m) for p in sorted(self.path.iterdir()) if (m := _NAME.fullmatch(p.name))]

    def records(self) -> dict[int, list[RankRecord]]:
        """rank -> its records (two or more: built twice); a record that cannot be read is one error line."""
        out: dict[int, list[RankRecord]] = {}
        for path, m in self._ours():
            if m.group(3) != "json":
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{path}: unreadable rank record ({err}); build that rank again") from None
            if not _well_formed(data, int(m[1]), f"rank{m[1]}.{m[2]}.engine"):
                raise CheckpointError(f"{path}: not a {RECORD_FORMAT} record for rank {m[1]}; build that rank again")
            out.setdefault(int(m[1]), []).append(RankRecord(int(m[1]), path, data))
        return out

    def partials(self) -> dict[int, list[Path]]:
        """rank -> plans whose task stopped before finishing (killed, out of memory, node lost)."""
        out: dict[int, list[Path]] = {}
        for path, m in self._ours():
            if m.group(3) == "engine.partial":
                out.setdefault(int(m[1]), []).append(path)
        return out

    def remove(self) -> None:
        """Remove the files ranks wrote here and then the directory, if nothing else is in it."""
        for path, _ in self._ours():
            path.unlink(missing_ok=True)
        for tmp in self.path.glob(".rank*.json.tmp") if self.path.is_dir() else ():
            tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a file we did not write is left alone, and the directory with it
            self.path.rmdir()
