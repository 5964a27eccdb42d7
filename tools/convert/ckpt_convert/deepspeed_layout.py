"""DeepSpeed checkpoint folders: which tag folder (``--tag`` or ``latest``), which layout, which files.

``locate`` names the layout of a tag folder and its files in rank order (``Spec``, picklable: worker processes
reopen the source from it); a gap in the ranks is reported as the missing file. How each layout's tensors are
rebuilt is in ``deepspeed_source``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ckptfmt import CheckpointError

from .source_guard import check_inside, source_roots

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL = re.compile(r"^zero_pp_rank_(?P<rank>\d+)_mp_rank_(?P<mp>\d+)_model_states\.pt$")
MP_MODEL = re.compile(r"^mp_rank_(?P<rank>\d+)_model_states\.pt$")
OPTIM = re.compile(r"^(bf16_|fp16_)?zero_pp_rank_(?P<rank>\d+)_mp_rank_(?P<mp>\d+)_optim_states\.pt$")
PIPE_LAYER = re.compile(r"^layer_(?P<layer>\d+)(?:-model_(?P<mp>\d+))?-model_states\.pt$")
TAG_FILES = ("latest", "latest_universal")
MAX_TAG = 255  # a file name


@dataclass(frozen=True)
class Spec:
    """Picklable description of what to read (workers reopen the source from it)."""

    tag_dir: Path
    layout: str  # module | zero12 | zero3 | fp32_groups | universal | pipeline | megatron
    model_files: tuple[Path, ...] = ()  # tensor-parallel rank major (zero3: then data-parallel rank; pipeline: layer)
    optim_files: tuple[Path, ...] = ()
    tp: int = 1  # tensor-parallel ranks (zero3, pipeline; megatron: one model file each)

    def of_rank(self, files: tuple[Path, ...], rank: int) -> tuple[Path, ...]:
        """The files of tensor-parallel rank ``rank`` (``files`` split evenly, rank major)."""
        per = len(files) // self.tp
        return files[rank * per : (rank + 1) * per]


def check_files_inside(spec: Spec, checkpoint_dir: Path) -> None:
    """Refuse a checkpoint file that is a link out of ``checkpoint_dir`` (it would be read as part of it)."""
    roots = source_roots(checkpoint_dir)
    for path in [spec.tag_dir, *spec.model_files, *spec.optim_files]:
        check_inside(path, roots, "a checkpoint file")
    if spec.layout == "universal":
        for path in (spec.tag_dir / "zero").rglob("*"):
            check_inside(path, roots, "a checkpoint file")


def tag_directory(checkpoint_dir: Path, tag: str | None) -> Path:
    """The tag folder: ``--tag``, else the one the ``latest`` file names, else the folder itself if it holds one."""
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"{checkpoint_dir}: not a directory (--checkpoint_dir)")
    tags = sorted(p.name for p in checkpoint_dir.iterdir() if p.is_dir() and _looks_like_tag(p))
    if tag is None:
        latest = next((checkpoint_dir / n for n in TAG_FILES if (checkpoint_dir / n).is_file()), None)
        if latest is None:
            if _looks_like_tag(checkpoint_dir):
                return checkpoint_dir
            raise CheckpointError(
                f"{checkpoint_dir}: no 'latest' file and no --tag given "
                f"(tags found: {', '.join(tags) or 'none; not a DeepSpeed checkpoint directory?'})"
            )
        check_inside(latest, source_roots(checkpoint_dir), "the latest file")
        with open(latest, "rb") as f:
            tag = f.read(MAX_TAG + 1).decode(errors="replace").strip()
        where = f"{latest}: names tag {tag!r}"
    else:
        where = f"--tag {tag}"
    if not tag or "/" in tag or tag in (".", "..") or len(tag) > MAX_TAG:
        raise CheckpointError(f"{where}: not a tag folder name")
    path = checkpoint_dir / tag
    if not path.is_dir():
        raise CheckpointError(
            f"{where}: no such tag folder in {checkpoint_dir} (tags found: {', '.join(tags) or 'none'})"
        )
    return path


def _looks_like_tag(path: Path) -> bool:
    return (
        (path / MODEL_STATES).is_file()
        or (path / "zero").is_dir()
        or any(ZERO3_MODEL.match(p.name) or PIPE_LAYER.match(p.name) for p in path.iterdir() if p.is_file())
    )


def locate(tag_dir: Path, from_fp32_master: bool) -> Spec:
    """The layout of ``tag_dir`` and its files (a missing or extra partition file is refused here)."""
    names = {p.name for p in tag_dir.iterdir()}
    if (tag_dir / "zero").is_dir():
        return Spec(tag_dir, "universal", ((tag_dir / MODEL_STATES),) if MODEL_STATES in names else ())
    if any(PIPE_LAYER.match(n) for n in names):
        return _pipeline(tag_dir, names)
    if any(ZERO3_MODEL.match(n) for n in names):
        return _zero3(tag_dir, names)
    model_parallel = _ranked(tag_dir, names, MP_MODEL, "model-parallel model-states")
    mp_ranks = {int(m.group(1)) for n in names if (m := re.search(r"mp_rank_(\d+)_", n))}
    top = max(mp_ranks, default=0)
    if 0 < top >= len(model_parallel):  # other files name a model-parallel rank that has no model-states file
        absent = tag_dir / f"mp_rank_{len(model_parallel):02d}_model_states.pt"
        raise CheckpointError(f"{absent}: missing (model-parallel rank {len(model_parallel)} of {top + 1})")
    if len(model_parallel) > 1:  # Megatron-DeepSpeed: one Megatron state dict per tensor-parallel rank
        if from_fp32_master:
            raise CheckpointError(
                f"{tag_dir}: --from_fp32_master with tensor-parallel ranks (Megatron-DeepSpeed): not supported "
                "yet; drop it to read the module weights"
            )
        return Spec(tag_dir, "megatron", tuple(model_parallel), tp=len(model_parallel))
    optim = _ranked(tag_dir, names, OPTIM, "optimizer partition")
    if MODEL_STATES not in names:
        raise CheckpointError(f"{tag_dir}: no {MODEL_STATES} (not a DeepSpeed checkpoint tag folder?)")
    model = (tag_dir / MODEL_STATES,)
    if not from_fp32_master:
        return Spec(tag_dir, "module", model)
    if optim:
        return Spec(tag_dir, "zero12", model, tuple(optim))
    return Spec(tag_dir, "fp32_groups", model)


def _zero3(tag_dir: Path, names: set[str]) -> Spec:
    """ZeRO 3: per tensor-parallel rank, its model-states and optimizer partitions over the data-parallel ranks."""
    mps = _model_ranks(tag_dir, names, ZERO3_MODEL, "zero_pp_rank_0_mp_rank_{:02d}_model_states.pt")
    models: list[list[Path]] = []
    optims: list[list[Path]] = []
    for mp in mps:
        zero3 = _ranked(tag_dir, names, ZERO3_MODEL, "model-states", mp)
        optim = _ranked(tag_dir, names, OPTIM, "optimizer partition", mp)
        if not optim:
            raise CheckpointError(f"{tag_dir}: ZeRO-3 model states but no *_optim_states.pt partition files")
        if len(zero3) != len(optim):
            fewer, more = (zero3, optim) if len(zero3) < len(optim) else (optim, zero3)
            absent = rank_file(fewer[0], len(fewer), OPTIM if fewer is optim else ZERO3_MODEL)
            raise CheckpointError(
                f"{absent}: missing (partition {len(fewer)} of {len(more)}: {more[len(fewer)].name} exists)"
            )
        if models and len(zero3) != len(models[0]):
            raise CheckpointError(
                f"{tag_dir}: tensor-parallel rank {mp} has {len(zero3)} data-parallel partitions, rank 0 has "
                f"{len(models[0])}"
            )
        models.append(zero3)
        optims.append(optim)
    return Spec(tag_dir, "zero3", tuple(p for m in models for p in m), tuple(p for o in optims for p in o), len(mps))


def _pipeline(tag_dir: Path, names: set[str]) -> Spec:
    """``layer_XX[-model_YY]-model_states.pt``: every tensor-parallel rank has the same layer indices."""
    found: dict[int, dict[int, str]] = {}
    for name in names:
        if m := PIPE_LAYER.match(name):
            found.setdefault(int(m.group("mp") or 0), {})[int(m.group("layer"))] = name
    mps = _model_ranks(tag_dir, set(found), None, "")
    layers = sorted(set().union(*(set(f) for f in found.values())))
    for mp in mps:
        if missing := next((i for i in layers if i not in found[mp]), None):
            raise CheckpointError(
                f"{tag_dir}/layer_{missing:02d}-model_{mp:02d}-model_states.pt: missing (pipeline layer of "
                f"tensor-parallel rank {mp}; {next(f[missing] for f in found.values() if missing in f)} exists)"
            )
    return Spec(tag_dir, "pipeline", tuple(tag_dir / found[mp][i] for mp in mps for i in layers), tp=len(mps))


def _model_ranks(tag_dir: Path, names: set, pattern: re.Pattern[str] | None, template: str) -> list[int]:
    """The model-parallel ranks named (``mp`` of ``pattern``, or ``names`` themselves): 0 .. n-1 or an error."""
    ranks = sorted(names if pattern is None else {int(m.group("mp")) for n in names if (m := pattern.match(n))})
    for rank in range(len(ranks)):
        if rank not in ranks:
            what = template.format(rank) if template else f"layer files of tensor-parallel rank {rank}"
            raise CheckpointError(f"{tag_dir}/{what}: missing (model-parallel rank {rank} of {ranks[-1] + 1})")
    return ranks


def _ranked(tag_dir: Path, names: set[str], pattern: re.Pattern[str], what: str, mp: int = 0) -> list[Path]:
    """Files of ``pattern`` (of model-parallel rank ``mp``) ordered by rank; a gap in the ranks is a missing
    partition file."""
    found: dict[int, str] = {}
    for name in names:
        if (m := pattern.match(name)) and int(m.groupdict().get("mp") or 0) == mp:
            rank = int(m.group("rank"))
            if rank in found:
                raise CheckpointError(f"{tag_dir}: two {what} files for rank {rank}: {found[rank]}, {name}")
            found[rank] = name
    for rank in range(max(found, default=-1) + 1):
        if rank not in found:
            some = rank_file(tag_dir / found[min(found)], rank, pattern)
            raise CheckpointError(f"{some}: missing ({what} file of rank {rank} of {max(found) + 1})")
    return [tag_dir / found[r] for r in sorted(found)]


def rank_file(example: Path, rank: int, pattern: re.Pattern[str] = OPTIM) -> Path:
    """``example`` (a rank's file, named by ``pattern``) renamed for ``rank`` (zero-padded as it is)."""
    m = pattern.match(example.name)
    assert m is not None  # example was found by pattern
    start, end = m.span("rank")
    width = end - start if example.name[start] == "0" else 0
    return example.with_name(f"{example.name[:start]}{rank:0{width}d}{example.name[end:]}")
