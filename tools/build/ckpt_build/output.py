"""Writing the engine directory fails in one line: which output, which file, why, and what to do.

A full disk used to surface as TensorRT's "no plan returned" (the plan is streamed through a Python callback whose
exceptions TensorRT swallows) or as a bare ``OSError``. Every ``OSError`` while the engine directory is written
(plan files, ``config.json``, ``manifest.json``, the temporary directory and its rename) becomes one
``CheckpointError`` naming ``--output_dir``; a full disk says so and how much the engines need.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ckptfmt.constants import MANIFEST_FILE
from ckptfmt.errors import CheckpointError
from ckptfmt.io import read_manifest, verify_manifest

FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputWriteError(Exception):
    """A file of the engine directory could not be written (raised where the output's name is unknown, e.g. in a
    worker process; picklable: ``args`` is the constructor's arguments)."""

    def __init__(self, file: str, code: int | None, reason: str):
        super().__init__(file, code, reason)
        self.file, self.code, self.reason = file, code, reason

    @classmethod
    def of(cls, file: str, err: OSError) -> OutputWriteError:
        return cls(file, err.errno, err.strerror or str(err))


def writing(file: str, write: Callable[..., None], *args) -> None:
    """``write(*args)``, its ``OSError`` (which may name no file: a failed write or close) about ``file``."""
    try:
        write(*args)
    except OSError as err:
        raise OutputWriteError.of(file, err) from None


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def weights_size(checkpoint_dir: Path) -> int:
    """Bytes of the checkpoint's rank files: a lower bound of what its engines need (they hold the weights)."""
    return sum(p.stat().st_size for p in checkpoint_dir.glob("rank*.safetensors") if p.is_file())


def output_error(output_dir: Path, err: OutputWriteError, known: int | None, weights: int) -> CheckpointError:
    """One line: the output directory, the file, the cause, and what to do.

    ``known``: bytes of the plans (and config.json) once every plan was built, else None; ``weights``: the
    checkpoint's rank files.
    """
    where = f"{output_dir}: cannot write {err.file}" if err.file else f"{output_dir}: cannot write the engine directory"
    if err.code in FULL:  # the failed run's files are removed by now: what is free is what we had
        free = megabytes(_free(output_dir))
        need = (
            f"the plans alone need {megabytes(known)}, {free} free"
            if known
            else f"the engines need more than the {free} free there (their weights alone are {megabytes(weights)})"
        )
        return CheckpointError(
            f"{where}: the disk is full ({err.reason}); {need}: free space or choose another --output_dir"
        )
    if err.code == errno.EFBIG:
        need = megabytes(known) if known else f"at least {megabytes(weights)} (the checkpoint's weights)"
        return CheckpointError(
            f"{where}: {err.reason} (a file size limit: see `ulimit -f`, or the file system's largest file); "
            f"the engines need {need}: raise the limit or choose another --output_dir"
        )
    if err.code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR):
        return CheckpointError(f"{where}: {err.reason}; choose a writable --output_dir")
    return CheckpointError(f"{where}: {err.reason}; check the output's disk or choose another --output_dir")


def _free(output_dir: Path) -> int:
    for d in (output_dir, *output_dir.absolute().parents):
        try:
            return shutil.disk_usage(d).free
        except OSError:
            continue
    return 0


def is_output_path(filename: object, output_dir: Path) -> bool:
    """``filename`` (an ``OSError``'s) is the output, one of its parents, or beside it under ``.NAME.*``."""
    if not isinstance(filename, (str, os.PathLike)):
        return False
    path, out = Path(os.path.abspath(filename)), Path(os.path.abspath(output_dir))
    if path == out or path in out.parents:
        return True
    try:
        first = path.relative_to(out.parent).parts[0]
    except (ValueError, IndexError):
        return False
    return first == out.name or first.startswith(f".{out.name}.")


def from_os_error(err: OSError, output_dir: Path) -> OutputWriteError:
    """An ``OSError`` about the output (``is_output_path``): the file it names inside the temp dir, or none."""
    path, out = Path(os.path.abspath(str(err.filename))), Path(os.path.abspath(output_dir))
    if path in out.parents and err.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir of a parent that is a file
        return OutputWriteError("", errno.ENOTDIR, f"{err.filename} is not a directory")
    if path in out.parents:
        return OutputWriteError("", err.errno, f"cannot create {err.filename} ({err.strerror})")
    inside = path.parent.parent == out.parent and path.parent.name.startswith(f".{out.name}.tmp-")
    return OutputWriteError.of(path.name if inside else "", err)


def check_written(directory: Path) -> None:
    """The manifest we wrote lists every file of ``directory`` with its size on disk (before it is published)."""
    listed = read_manifest(directory) or {}
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir()}
    unlisted = sorted(present - set(listed) - {MANIFEST_FILE})
    problems = verify_manifest(directory, hash_files=False) + [f"{name}: not in {MANIFEST_FILE}" for name in unlisted]
    if not listed or problems:
        raise OutputWriteError(MANIFEST_FILE, errno.EIO, problems[0] if problems else "no files listed")


@contextlib.contextmanager
def output_errors(output_dir: Path, checkpoint_dir: Path, sizes: list[int]) -> Iterator[None]:
    """Every ``OSError`` about the output inside the block in one line (``output_error``); ``sizes``: the bytes
    of the plans built so far, filled in by the block."""
    try:
        yield
    except (OutputWriteError, OSError) as err:
        if isinstance(err, OSError) and not is_output_path(err.filename, output_dir):
            raise  # not ours to name (e.g. a checkpoint file that vanished)
        if isinstance(err, OSError):
            err = from_os_error(err, output_dir)
        raise output_error(output_dir, err, sum(sizes) or None, weights_size(checkpoint_dir)) from None
