"""Load a CNN/DailyMail-style summarization set (`article`, `highlights`) from wherever it lives.

Sources, picked from `path`:
- None: the small set shipped in `ckpt_eval/data` (written for this project);
- a `.json` (a list of records or `{"data": [...]}`), `.jsonl`, `.parquet` or `.arrow` file;
- a directory written by `datasets.save_to_disk` (a Dataset, or a DatasetDict with one folder per split),
  read with pyarrow alone;
- any other directory: its data files (the `split` subfolder, or the files named after the split, if any);
- the hub names `cnn_dailymail` / `ccdv/cnn_dailymail` (config 3.0.0) through `datasets.load_dataset`.
"""

from __future__ import annotations

import json
import os
import socket
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REQUIRED_FIELDS = ("article", "highlights")
HUB_NAMES = ("cnn_dailymail", "ccdv/cnn_dailymail", "abisee/cnn_dailymail")
HUB_CONFIG = "3.0.0"
SHIPPED_FILE = "cnn_dailymail_mini.jsonl"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow")
KNOWN_SPLITS = ("train", "validation", "test")


class DatasetError(Exception):
    """A dataset that cannot be read or lacks the summarization fields; the message is one line."""


def load_summarization_dataset(path: str | os.PathLike | None, split: str = "test") -> list[dict]:
    """Return the records of a summarization set, each a dict with at least `article` and `highlights`."""
    if path is None:
        shipped = resources.files("ckpt_eval") / "data" / SHIPPED_FILE
        with resources.as_file(shipped) as shipped_path:
            return _validated(_read_jsonl(shipped_path), str(shipped_path))
    local = Path(path)
    if str(path) in HUB_NAMES and not local.exists():
        return _validated(_read_hub(str(path), split), f"{path} ({split} split)")
    if not local.exists():
        raise DatasetError(f"{local}: no such dataset file or directory")
    records = _read_directory(local, split) if local.is_dir() else _read_file(local)
    return _validated(records, str(local))


def _read_file(path: Path) -> list[dict]:
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".parquet": _read_parquet, ".arrow": _read_arrow}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"{path}: unsupported dataset file type (use one of {', '.join(DATA_SUFFIXES)})")
    try:
        records = reader(path)
    except DatasetError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise DatasetError(f"{path}: cannot read ({_one_line(exc)})") from exc
    _check_fields(records, str(path))
    return records


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return data["data"]
    if not isinstance(data, list):
        raise DatasetError(f'{path}: expected a list of records or {{"data": [...]}}')
    return data


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: invalid JSON on line {number} ({exc.msg})") from exc
    return records


def _read_parquet(path: Path) -> list[dict]:
    return _pyarrow(path).parquet.read_table(path).to_pylist()


def _read_arrow(path: Path) -> list[dict]:
    """Read an Arrow IPC file or stream (the latter is what `datasets` writes)."""
    pa = _pyarrow(path)
    try:
        with pa.ipc.open_file(path) as reader:
            return reader.read_all().to_pylist()
    except pa.ArrowInvalid:
        with pa.ipc.open_stream(path) as reader:
            return reader.read_all().to_pylist()


def _pyarrow(path: Path) -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise DatasetError(f"{path}: reading {path.suffix} needs pyarrow (pip install pyarrow)") from exc
    return pyarrow


def _read_directory(directory: Path, split: str) -> list[dict]:
    if (directory / "dataset_dict.json").is_file():
        return _read_dataset_dict(directory, split)
    if (directory / "state.json").is_file():
        return _read_saved_dataset(directory)
    if (directory / split).is_dir():
        return _read_directory(directory / split, split)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise DatasetError(f"{directory}: no dataset files ({', '.join(DATA_SUFFIXES)}) in this directory")
    split_files = [p for p in files if p.name.lower().startswith(KNOWN_SPLITS)]
    if split_files:
        files = [p for p in split_files if p.name.lower().startswith(split)]
        if not files:
            names = ", ".join(p.name for p in split_files)
            raise DatasetError(f"{directory}: no file for split '{split}' (found {names})")
    return [record for file in files for record in _read_file(file)]


def _read_dataset_dict(directory: Path, split: str) -> list[dict]:
    splits = _read_json_object(directory / "dataset_dict.json").get("splits", [])
    if split not in splits:
        raise DatasetError(f"{directory}: no split '{split}' (splits: {', '.join(map(str, splits))})")
    return _read_saved_dataset(directory / split)


def _read_saved_dataset(directory: Path) -> list[dict]:
    """Read a `datasets.save_to_disk` folder: state.json lists its Arrow stream shards."""
    shards = _read_json_object(directory / "state.json").get("_data_files")
    names = [shard.get("filename") for shard in shards or [] if isinstance(shard, dict)]
    if not names or None in names:
        raise DatasetError(f"{directory / 'state.json'}: `_data_files` does not list the data files")
    return [record for name in names if name is not None for record in _read_file(directory / name)]


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return data


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(f"{name}: loading from the hub needs `datasets` (pip install datasets)") from exc
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not offline and not _reachable(endpoint):
        raise DatasetError(
            f"{name}: cannot reach the dataset hub at {endpoint} (offline?); pass a local copy (json/jsonl/"
            "parquet/arrow file or save_to_disk directory), or set HF_HUB_OFFLINE=1 to use a cached copy"
        )
    try:
        return list(datasets.load_dataset(name, HUB_CONFIG, split=split))
    except Exception as exc:  # datasets raises many unrelated types; report them all in one line
        reason = _one_line(exc)
        raise DatasetError(f"{name}: cannot load {HUB_CONFIG}/{split} from the hub ({reason})") from exc


def _reachable(url: str, timeout_s: float = 5.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _validated(records: list, source: str) -> list[dict]:
    if not records:
        raise DatasetError(f"{source}: the dataset has no records")
    _check_fields(records, source)
    return records


def _check_fields(records: list, source: str) -> None:
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetError(f"{source}: record {index} is a {type(record).__name__}, not an object")
        missing = [field for field in REQUIRED_FIELDS if field not in record]
        if missing:
            present = ", ".join(sorted(map(str, record))) or "none"
            raise DatasetError(
                f"{source}: record {index} is missing field {', '.join(missing)} (fields present: {present})"
            )
        for field in REQUIRED_FIELDS:
            if not isinstance(record[field], str):
                kind = type(record[field]).__name__
                raise DatasetError(f"{source}: record {index} field '{field}' is a {kind}, not text")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
