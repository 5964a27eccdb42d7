"""The ROUGE table and the report folder: results.json content, a real PNG chart, atomic writes."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from ckpt_eval.report import (
    ReportError,
    format_table,
    library_versions,
    print_table,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SYSTEMS = {
    "ours": {
        "rouge1": 31.25,
        "rouge2": 10.5,
        "rougeL": 22.0,
        "rougeLsum": 27.75,
        "tokens_per_s": 152.34,
        "latency_per_batch_s": 1.5,
    },
    "hf": {"rouge1": 31.0, "rouge2": 10.75, "rougeL": 22.0, "rougeLsum": 27.5, "tokens_per_s": 98.0},
}


def _rows(table: str) -> dict[str, list[str]]:
    """Table text as {first cell: remaining cells}, splitting on runs of two or more spaces."""
    return {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in table.splitlines())}


def test_table_puts_systems_side_by_side_with_their_difference() -> None:
    rows = _rows(format_table(SYSTEMS))
    assert rows["metric"] == ["ours", "hf", "ours - hf"]
    assert rows["ROUGE-1"] == ["31.25", "31.00", "+0.25"]
    assert rows["ROUGE-2"] == ["10.50", "10.75", "-0.25"]
    assert rows["ROUGE-L"] == ["22.00", "22.00", "+0.00"]
    assert rows["ROUGE-Lsum"] == ["27.75", "27.50", "+0.25"]
    assert rows["tokens/s"] == ["152.3", "98.0", "+54.3"]
    assert rows["latency/batch (s)"] == ["1.500", "-", "-"]


def test_table_of_one_system_has_no_difference_column() -> None:
    rows = _rows(format_table({"ours": SYSTEMS["ours"]}))
    assert rows["metric"] == ["ours"]
    assert rows["ROUGE-1"] == ["31.25"]


def test_print_table_writes_the_table() -> None:
    stream = io.StringIO()
    print_table(SYSTEMS, file=stream)
    assert stream.getvalue() == format_table(SYSTEMS) + "\n"


def test_report_writes_results_json_and_a_png_chart(tmp_path: Path) -> None:
    results = {
        "systems": {**SYSTEMS, "hf": {**SYSTEMS["hf"], "latency_per_batch_s": np.float64(2.25)}},
        "settings": {"batch_size": np.int64(4), "dataset": tmp_path / "set.jsonl", "max_ite": 20},
        "timings": {"total_s": 12.5, "broken": float("nan")},
    }
    paths = write_report(tmp_path / "report", results)
    assert paths == {"results": tmp_path / "report" / "results.json", "chart": tmp_path / "report" / "rouge.png"}

    document = json.loads(paths["results"].read_text(encoding="utf-8"))
    assert document["systems"]["ours"] == SYSTEMS["ours"]
    assert document["systems"]["hf"]["latency_per_batch_s"] == 2.25
    assert document["settings"] == {"batch_size": 4, "dataset": str(tmp_path / "set.jsonl"), "max_ite": 20}
    assert document["timings"] == {"total_s": 12.5, "broken": None}
    assert document["versions"]["python"].count(".") == 2
    assert document["versions"]["rouge_score"] == library_versions()["rouge_score"]

    png = paths["chart"].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1100, 450)
    assert png.endswith(b"IEND\xaeB`\x82")
    assert sorted(path.name for path in (tmp_path / "report").iterdir()) == [
        "manifest.json",
        "results.json",
        "rouge.png",
    ]


def test_png_chart_decodes_to_pixels(tmp_path: Path) -> None:
    from matplotlib import image

    paths = write_report(tmp_path / "report", {"systems": {"ours": SYSTEMS["ours"]}})
    pixels = image.imread(paths["chart"])
    assert pixels.shape[:2] == (450, 1100)
    assert pixels.std() > 0.01  # bars and text, not a blank canvas


def test_report_replaces_an_earlier_report_only_with_overwrite(tmp_path: Path) -> None:
    report = tmp_path / "report"
    write_report(report, {"systems": SYSTEMS, "settings": {"run": 1}})
    with pytest.raises(ReportError, match="already exists \\(pass --overwrite"):
        write_report(report, {"systems": SYSTEMS, "settings": {"run": 2}})
    write_report(report, {"systems": SYSTEMS, "settings": {"run": 2}}, overwrite=True)
    assert json.loads((report / "results.json").read_text())["settings"] == {"run": 2}
    assert sorted(path.name for path in report.iterdir()) == ["manifest.json", "results.json", "rouge.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]  # no temporaries left


def test_report_never_replaces_other_files_or_an_input(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match="holds other files, so it is left alone"):
        write_report(tmp_path, {"systems": SYSTEMS}, overwrite=True)
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(ReportError, match="lies inside the input"):
        write_report(model / "report", {"systems": SYSTEMS}, inputs=[model])
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (model / "report").exists()


def test_report_into_a_file_path_fails_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "report"
    blocker.write_text("not a directory", encoding="utf-8")
    with pytest.raises(ReportError, match="exists and is not a directory") as error:
        write_report(blocker, {"systems": SYSTEMS})
    assert str(error.value).startswith(str(blocker)) and "\n" not in str(error.value)


def test_report_needs_systems(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no systems to report"):
        write_report(tmp_path / "report", {"settings": {}})
    with pytest.raises(ReportError, match="must map names to dicts"):
        write_report(tmp_path / "report", {"systems": {"ours": 31.0}})
    assert not (tmp_path / "report").exists()


class InterruptedScores(dict):
    """Scores whose lookup is interrupted, as Ctrl-C would while the chart is drawn (JSON is already written)."""

    def get(self, key, default=None):
        raise KeyboardInterrupt


def test_an_interrupted_report_leaves_the_earlier_one_and_no_temporaries(tmp_path: Path) -> None:
    report = tmp_path / "report"
    write_report(report, {"systems": SYSTEMS, "settings": {"run": 1}})
    with pytest.raises(KeyboardInterrupt):
        write_report(report, {"systems": {"ours": InterruptedScores(SYSTEMS["ours"])}}, overwrite=True)
    assert json.loads((report / "results.json").read_text())["settings"] == {"run": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path / "new", {"systems": {"ours": InterruptedScores(SYSTEMS["ours"])}})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]
