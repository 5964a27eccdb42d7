"""Find what a NeMo / Megatron checkpoint holds: hyper-parameters, weights layout, tokenizer files.

Accepted inputs (``locate``):
- NeMo 1 ``.nemo``: an (uncompressed) tar, or its extracted directory, with ``model_config.yaml`` and
  ``model_weights.ckpt`` | ``mp_rank_XX/model_weights.ckpt`` | ``tp_rank_XX_pp_rank_XXX/model_weights.ckpt``
  | ``model_weights/`` (torch_dist), plus tokenizer artifacts;
- NeMo 2 directory: ``context/model.yaml`` (+ ``context/nemo_tokenizer/``) and ``weights/`` (torch_dist);
- Megatron-core torch_dist directory (``.metadata``; Megatron-LM ``iter_*`` folders resolved through
  ``latest_checkpointed_iteration.txt``); its hyper-parameters come from ``--model_config``.
Tar members are extracted (regular files only, names that would leave it refused) into a work directory that the
caller removes, except the weights of an uncompressed archive: each ``model_weights.ckpt`` that is a torch zip is read
in place inside the archive (a ``torch_pickle.Region``), never copied.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path

from ckptfmt import CheckpointError

from .foreign import foreign_format
from .source_guard import check_inside, source_roots
from .torch_pickle import Region

NEMO1_CONFIG = "model_config.yaml"
NEMO1_WEIGHTS = "model_weights.ckpt"
NEMO2_CONFIG = "context/model.yaml"
DIST_METADATA = ".metadata"
NEMO_DIRECTORY = "a NeMo / Megatron checkpoint"  # as ckptfmt.kinds names it
TOKENIZER_NAMES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "generation_config.json",
)
_RANK_DIR = re.compile(r"^(?:mp_rank_(\d+)|tp_rank_(\d+)_pp_rank_(\d+))$")
_HASH_PREFIX = re.compile(r"^[0-9a-f]{6,}_")


@dataclass(frozen=True)
class Located:
    """What was found: the hyper-parameter dict, where the weights are, and tokenizer files to carry."""

    kind: str  # "nemo1" | "nemo2" | "mcore"
    hparams: dict
    config_file: str  # named in errors
    dist_dir: Path | None = None  # torch_dist weights
    dist_files: dict[str, Region] = field(default_factory=dict)  # its .distcp files read inside the archive
    shard_files: dict[tuple[int, int], Region] = field(default_factory=dict)  # (tp, pp) -> model_weights.ckpt
    tokenizer_files: dict[str, Path] = field(default_factory=dict)  # name in <out>/tokenizer -> file


def extract(archive: Path, work: Path) -> dict[str, Region]:
    """Extract ``archive`` (tar) into ``work`` but for its weights read in place (returned: name under ``work`` ->
    ``Region`` of the archive); one-line errors for non-tar and truncated archives.

    Bounded before a byte is written: the extracted members' sizes (as the tar headers claim them) must fit the free
    space beside the output, a compressed archive may not expand more than ``MAX_EXPANSION`` times, and sparse
    members (whose real size exceeds what the archive stores) are refused. Every member is copied up to its claimed
    size and no further.
    """
    if not tarfile.is_tarfile(archive):
        raise CheckpointError(f"{archive}: not a .nemo archive (neither a tar file nor a directory)")
    in_place = weights_in_place(archive)
    check_extraction_size(archive, work, skip=set(in_place))
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if member.isfile() and member_name(member) not in in_place:
                    _extract_file(tar, member, work, archive)
    except (tarfile.TarError, EOFError) as err:
        raise CheckpointError(f"{archive}: truncated or corrupt tar archive ({err})") from None
    return in_place


def member_name(member: tarfile.TarInfo) -> str:
    """The member's path relative to the extraction directory (``./a/b`` -> ``a/b``)."""
    return "/".join(p for p in Path(member.name).parts if p not in (".", ""))


def weights_in_place(archive: Path) -> dict[str, Region]:
    """The weights of an uncompressed archive, read where they lie: ``model_weights.ckpt`` members that are torch
    zips, and torch_dist ``.distcp`` files (their ``.metadata`` is extracted)."""
    if _compressed(archive):
        return {}
    found = {}
    try:
        with tarfile.open(archive, "r:") as tar, open(archive, "rb") as f:
            for member in tar:
                if not member.isfile() or member.issparse():
                    continue
                f.seek(member.offset_data)
                if member.name.endswith(".distcp") or (
                    Path(member.name).name == NEMO1_WEIGHTS and f.read(4) == b"PK\x03\x04"
                ):
                    name = member_name(member)
                    found[name] = Region(archive, member.offset_data, member.size, name)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CheckpointError(f"{archive}: truncated or corrupt tar archive ({err})") from None
    return found


MAX_EXPANSION = 20  # a compressed .nemo of weights expands ~1.1x; zeros and bombs far more
EXPANSION_ALLOWANCE = 64 << 20  # small archives (tokenizers, tiny test models) may expand beyond that ratio
FREE_MARGIN = 256 << 20  # left free on the output's disk after the extraction


def check_extraction_size(archive: Path, work: Path, skip: Set[str] = frozenset()) -> int:
    """Total bytes the archive's headers claim for its regular files (but ``skip``, not extracted); refused if it
    cannot or should not fit."""
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:  # headers only: a plain tar is seeked through, not read
            for member in tar:
                if member.issparse():
                    raise CheckpointError(
                        f"{archive}: member {member.name!r} is a sparse file ({member.size} bytes stored as "
                        "fewer): refused (a .nemo archive holds no sparse files)"
                    )
                if member.isfile() and member_name(member) not in skip:
                    total += member.size
    except (tarfile.TarError, EOFError, OSError) as err:  # OSError: a claimed size seeks past the largest file
        raise CheckpointError(f"{archive}: truncated or corrupt tar archive ({err})") from None
    stored = archive.stat().st_size
    if _compressed(archive) and total > MAX_EXPANSION * stored + EXPANSION_ALLOWANCE:
        raise CheckpointError(
            f"{archive}: would expand from {stored / 1e6:.1f} MB to {total / 1e6:.1f} MB: refused (more than "
            f"{MAX_EXPANSION}x; extract it yourself and pass the directory if it is genuine)"
        )
    free = shutil.disk_usage(work).free
    if total > free - FREE_MARGIN:
        raise CheckpointError(
            f"{archive}: extracting needs {total / 1e9:.2f} GB beside the output, {free / 1e9:.2f} GB free "
            f"in {work.parent}: free space, or extract it elsewhere and pass the directory"
        )
    return total


def _compressed(archive: Path) -> bool:
    with open(archive, "rb") as f:
        magic = f.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00"


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, work: Path, archive: Path) -> None:
    """Copy one regular file under ``work``; names that would leave it are refused (works on every Python
    3.10+, unlike ``extract(filter="data")``, which older 3.11 patch releases lack)."""
    parts = Path(member.name).parts
    if Path(member.name).is_absolute() or ".." in parts:
        raise CheckpointError(f"{archive}: member {member.name!r} would extract outside the target directory")
    target = work.joinpath(*[p for p in parts if p not in (".", "")])
    target.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    assert src is not None  # a regular file: the caller checks isfile()
    with open(target, "wb") as dst:
        left = member.size
        while left > 0 and (chunk := src.read(min(left, 16 << 20))):
            dst.write(chunk)
            left -= len(chunk)
        if src.read(1):
            raise CheckpointError(f"{archive}: member {member.name!r} holds more than its claimed {member.size} bytes")


def locate(root: Path, model_config: Path | None, label: str, in_archive: dict[str, Region] | None = None) -> Located:
    """Identify the checkpoint layout under ``root`` (an extracted archive, whose weights may be ``in_archive``,
    or a directory); every file it names is checked not to be a link out of ``root`` (the config before it is
    read)."""
    roots = source_roots(root)
    for name in (NEMO2_CONFIG, NEMO1_CONFIG):
        if (root / name).exists():
            check_inside(root / name, roots, "the model config")
    found = _locate(root, model_config, label, in_archive or {})
    weights = [r.path for r in found.shard_files.values() if not r.member]
    if found.dist_dir is not None:
        check_inside(found.dist_dir, roots, "the weights directory")
        weights += sorted(found.dist_dir.iterdir())
    for path in weights:
        check_inside(path, roots, "a weight file")
    for path in found.tokenizer_files.values():
        check_inside(path, roots, "a tokenizer file")
    return found


def _locate(root: Path, model_config: Path | None, label: str, in_archive: dict[str, Region]) -> Located:
    override = read_hparams(model_config) if model_config else None
    cfg_label = str(model_config) if model_config else None
    if (root / NEMO2_CONFIG).is_file() and (root / "weights").is_dir():
        model_yaml = read_yaml(root / NEMO2_CONFIG, f"{label}: {NEMO2_CONFIG}")
        hparams = override or (model_yaml.get("config") if isinstance(model_yaml, dict) else None)
        if not isinstance(hparams, dict):
            raise CheckpointError(f"{label}: {NEMO2_CONFIG}: no 'config' section")
        return Located(
            "nemo2",
            hparams,
            cfg_label or f"{label}: {NEMO2_CONFIG}",
            dist_dir=root / "weights",
            tokenizer_files=_nemo2_tokenizer(root / "context"),
        )
    if (root / NEMO1_CONFIG).is_file():
        hparams = override or read_yaml(root / NEMO1_CONFIG, f"{label}: {NEMO1_CONFIG}")
        if not isinstance(hparams, dict):
            raise CheckpointError(f"{label}: {NEMO1_CONFIG}: not a mapping")
        return _nemo1(root, hparams, cfg_label or f"{label}: {NEMO1_CONFIG}", label, in_archive)
    dist = _megatron_dir(root)
    if dist is not None:
        if override is None or cfg_label is None:  # both set by --model_config
            raise CheckpointError(
                f"{label}: a Megatron-core checkpoint carries no model hyper-parameters: "
                "pass them with --model_config FILE.yaml|json"
            )
        return Located("mcore", override, cfg_label, dist_dir=dist)
    if (
        in_archive
        or any(root.glob("*.distcp"))
        or any(root.glob("*/" + NEMO1_WEIGHTS))
        or (root / NEMO1_WEIGHTS).exists()
    ):
        raise CheckpointError(f"{label}: missing {NEMO1_CONFIG} (NeMo 1) or {NEMO2_CONFIG} (NeMo 2)")
    if other := foreign_format(root, NEMO_DIRECTORY):
        raise CheckpointError(f"{label}: not a NeMo or Megatron checkpoint but {other}")
    raise CheckpointError(
        f"{label}: not a NeMo or Megatron checkpoint (no {NEMO1_CONFIG}, {NEMO2_CONFIG} or {DIST_METADATA} found)"
    )


def _nemo1(root: Path, hparams: dict, cfg_label: str, label: str, in_archive: dict[str, Region]) -> Located:
    tokens = _nemo1_tokenizer(root, hparams)
    if (root / "model_weights" / DIST_METADATA).is_file():
        dist = {n.removeprefix("model_weights/"): r for n, r in in_archive.items() if n.startswith("model_weights/")}
        return Located(
            "nemo1", hparams, cfg_label, dist_dir=root / "model_weights", dist_files=dist, tokenizer_files=tokens
        )
    files = [root / NEMO1_WEIGHTS, *sorted(root.glob(f"*/{NEMO1_WEIGHTS}"))]
    weights = {p.relative_to(root).as_posix(): Region(p) for p in files if p.is_file()} | in_archive
    shards: dict[tuple[int, int], Region] = {}
    for name in sorted(weights):
        folder, _, file = name.rpartition("/")
        m = _RANK_DIR.match(folder)
        if m and file == NEMO1_WEIGHTS:
            tp, pp = (int(m.group(1)), 0) if m.group(1) is not None else (int(m.group(2)), int(m.group(3)))
            shards[(tp, pp)] = weights[name]
    if not shards and NEMO1_WEIGHTS in weights:
        shards[(0, 0)] = weights[NEMO1_WEIGHTS]
    if not shards:
        raise CheckpointError(
            f"{label}: no weights ({NEMO1_WEIGHTS}, mp_rank_XX/, tp_rank_XX_pp_rank_XXX/ or model_weights/)"
        )
    return Located("nemo1", hparams, cfg_label, shard_files=shards, tokenizer_files=tokens)


def _nemo2_tokenizer(context: Path) -> dict[str, Path]:
    """``context/nemo_tokenizer/`` (HF tokenizer files), else tokenizer files among ``context/artifacts/``."""
    tok_dir = context / "nemo_tokenizer"
    if tok_dir.is_dir():
        return {p.relative_to(tok_dir).as_posix(): p for p in sorted(tok_dir.rglob("*")) if p.is_file()}
    artifacts = context / "artifacts"
    found = sorted(artifacts.rglob("*")) if artifacts.is_dir() else []
    return {p.name: p for p in found if p.is_file() and p.name in TOKENIZER_NAMES}


def _nemo1_tokenizer(root: Path, hparams: dict) -> dict[str, Path]:
    """Tokenizer artifacts: files the YAML names as ``nemo:<file>`` and well-known tokenizer file names."""
    named = set()
    tok = hparams.get("tokenizer")
    if isinstance(tok, dict):
        named = {v[len("nemo:") :] for v in tok.values() if isinstance(v, str) and v.startswith("nemo:")}
    out = {}
    for p in sorted(root.iterdir()):
        plain = _HASH_PREFIX.sub("", p.name)
        if p.is_file() and (p.name in named or plain in TOKENIZER_NAMES):
            out[plain] = p
    return out


def _megatron_dir(root: Path) -> Path | None:
    if (root / DIST_METADATA).is_file():
        return root
    latest = root / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        text = latest.read_text().strip()
        step = (
            root / (text if text == "release" else f"iter_{int(text):07d}")
            if text.isdigit() or text == "release"
            else None
        )
        if step is not None and (step / DIST_METADATA).is_file():
            return step
    return None


def read_yaml(path: Path, label: str):
    import yaml  # the [nemo] extra; checked by nemo.run

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise CheckpointError(f"{label}: not valid YAML{line}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{label}: cannot read ({err})") from None


def read_hparams(path: Path) -> dict:
    """``--model_config``: YAML or JSON (a NeMo ``model.yaml`` may be given whole: its ``config`` is used)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: --model_config file missing")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    else:
        data = read_yaml(path, str(path))
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "num_layers" not in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: --model_config must hold a mapping of hyper-parameters")
    return data
