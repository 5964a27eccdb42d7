"""Loading summarization sets from the shipped file, each local format, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckpt_eval.dataset import DatasetError, load_summarization_dataset

RECORDS = [
    {"id": "a", "article": "The council voted to close the bridge. Drivers will detour.", "highlights": "Bridge shut."},
    {"id": "b", "article": "A rover found ice on the moon.", "highlights": "Ice found.\nRover drills."},
    {"id": "c", "article": "Hartley Town won the cup tie 2-1.", "highlights": "Upset in the cup."},
]


def _texts(records: list[dict]) -> list[tuple[str, str]]:
    return [(record["article"], record["highlights"]) for record in records]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _write_arrow(path: Path, records: list[dict], stream: bool) -> Path:
    pa = pytest.importorskip("pyarrow")
    table = pa.Table.from_pylist(records)
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_shipped_set_has_enough_articles_with_highlights() -> None:
    records = load_summarization_dataset(None)
    assert len(records) >= 24
    assert len({record["id"] for record in records}) == len(records)
    for record in records:
        assert 150 <= len(record["article"].split()) <= 400
        assert 3 <= len(record["highlights"].split("\n")) <= 4


@pytest.mark.parametrize("layout", ["list", "data"])
def test_json_file(tmp_path: Path, layout: str) -> None:
    payload = RECORDS if layout == "list" else {"data": RECORDS}
    path = tmp_path / "set.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    assert _texts(load_summarization_dataset(path)) == _texts(RECORDS)


def test_jsonl_file_skips_blank_lines(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "set.jsonl", RECORDS)
    path.write_text(path.read_text() + "\n\n", encoding="utf-8")
    assert _texts(load_summarization_dataset(str(path))) == _texts(RECORDS)


def test_parquet_file(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    assert _texts(load_summarization_dataset(path)) == _texts(RECORDS)


@pytest.mark.parametrize("stream", [False, True], ids=["ipc-file", "ipc-stream"])
def test_arrow_file(tmp_path: Path, stream: bool) -> None:
    path = _write_arrow(tmp_path / "set.arrow", RECORDS, stream)
    assert _texts(load_summarization_dataset(path)) == _texts(RECORDS)


def test_datasets_save_to_disk_directory(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "saved"))
    assert _texts(load_summarization_dataset(tmp_path / "saved")) == _texts(RECORDS)


def test_datasets_dataset_dict_directory_picks_the_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    splits = {"train": datasets.Dataset.from_list(RECORDS[:1]), "test": datasets.Dataset.from_list(RECORDS[1:])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    assert _texts(load_summarization_dataset(tmp_path / "saved")) == _texts(RECORDS[1:])
    assert _texts(load_summarization_dataset(tmp_path / "saved", split="train")) == _texts(RECORDS[:1])
    with pytest.raises(DatasetError, match=r"no split 'validation' \(splits: train, test\)"):
        load_summarization_dataset(tmp_path / "saved", split="validation")


def test_directory_of_files_reads_the_split_files(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    _write_jsonl(tmp_path / "test.jsonl", RECORDS[1:])
    assert _texts(load_summarization_dataset(tmp_path)) == _texts(RECORDS[1:])
    with pytest.raises(DatasetError, match="no file for split 'validation'"):
        load_summarization_dataset(tmp_path, split="validation")


def test_directory_of_unsplit_files_reads_all_in_name_order(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "part-1.jsonl", RECORDS[:2])
    _write_arrow(tmp_path / "part-2.arrow", RECORDS[2:], stream=True)
    assert _texts(load_summarization_dataset(tmp_path)) == _texts(RECORDS)


def test_split_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "3.0.0" / "test").mkdir(parents=True)
    _write_jsonl(tmp_path / "3.0.0" / "test" / "data.jsonl", RECORDS)
    assert _texts(load_summarization_dataset(tmp_path / "3.0.0")) == _texts(RECORDS)


def test_wrong_field_names_list_the_fields_present(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "xsum.jsonl", [{"document": "text", "summary": "short", "id": "1"}])
    with pytest.raises(DatasetError) as error:
        load_summarization_dataset(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert "is missing field article, highlights (fields present: document, id, summary)" in message


def test_field_that_is_not_text(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "set.jsonl", [{"article": "text", "highlights": ["a", "b"]}])
    with pytest.raises(DatasetError, match="record 0 field 'highlights' is a list, not text"):
        load_summarization_dataset(path)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"absent\.jsonl: no such dataset file or directory"):
        load_summarization_dataset(tmp_path / "absent.jsonl")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("broken.jsonl", '{"article": "a", "highlights": "b"}\n{"article": \n', "invalid JSON on line 2"),
        ("broken.json", "[{]", "invalid JSON at line 1"),
        ("object.json", '{"rows": []}', r'expected a list of records or \{"data": \[...\]\}'),
        ("empty.jsonl", "\n", "the dataset has no records"),
        ("set.csv", "article,highlights\n", "unsupported dataset file type"),
        ("garbage.parquet", "not parquet", "cannot read"),
        ("garbage.arrow", "not arrow", "cannot read"),
    ],
)
def test_unreadable_files_give_one_line_errors(tmp_path: Path, name: str, content: str, expected: str) -> None:
    if name.endswith((".parquet", ".arrow")):
        pytest.importorskip("pyarrow")
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=expected) as error:
        load_summarization_dataset(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(DatasetError, match="no dataset files"):
        load_summarization_dataset(tmp_path)


def test_hub_name_fails_in_one_line_when_the_hub_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    from ckpt_eval.dataset import _reachable

    if _reachable("https://huggingface.co", timeout_s=3):
        pytest.skip("the dataset hub is reachable: this test checks the offline message")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DatasetError, match=r"^cnn_dailymail: cannot reach the dataset hub") as error:
        load_summarization_dataset("cnn_dailymail")
    assert "\n" not in str(error.value)


def test_wrong_fields_in_a_directory_name_the_file(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "part-1.jsonl", RECORDS)
    _write_jsonl(tmp_path / "part-2.jsonl", [{"article": "text", "summary": "short"}])
    with pytest.raises(DatasetError, match=r"part-2\.jsonl: record 0 is missing field highlights"):
        load_summarization_dataset(tmp_path)


def test_save_to_disk_state_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"_data_files": []}', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"state\.json: `_data_files` does not list the data files"):
        load_summarization_dataset(tmp_path)
