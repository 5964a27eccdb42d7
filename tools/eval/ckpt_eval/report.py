"""The results of every eval task: a text table of the tested systems and a report folder (JSON + PNG chart).

A system's entry maps score keys (ckpt-summarize: the ROUGE keys of `metrics.ROUGE_KEYS` ×100; ckpt-mmlu:
accuracy; ckpt-perplexity: perplexity) and optionally `tokens_per_s` and `latency_per_batch_s` to numbers;
missing values print as "-". Text entries of `TEXT_ROWS` (the `quantization` label of `quant_label`) head the
table and name the chart's bars when a system has them. Which scores a table shows and a chart draws is a
`Chart` (default: ROUGE).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from ckptfmt import CheckpointError, atomic_output_dir, write_manifest

from .metrics import ROUGE_KEYS

RESULTS_FILE = "results.json"
CHART_FILE = "rouge.png"
ROW_LABELS = {
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
    "tokens_per_s": "tokens/s",
    "latency_per_batch_s": "latency/batch (s)",
}
ROW_FORMATS = {"tokens_per_s": "{:.1f}", "latency_per_batch_s": "{:.3f}"}
TEXT_ROWS = {"quantization": "quantization"}  # text entries printed above the scores, no difference
# Reported versions: a label and the distributions that may provide it, first installed one wins.
VERSION_SOURCES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
    "tensorrt_rtx": ("tensorrt-rtx", "tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu12-bindings"),
    "rouge_score": ("rouge-score",),
    "numpy": ("numpy",),
    "ckpt_eval": ("ckpt-eval",),
}


class ReportError(Exception):
    """The report cannot be written; the message is one line naming the path."""


@dataclass(frozen=True)
class Chart:
    """What a task's table and chart show: score keys with labels, the chart's file name, title and y label."""

    scores: dict[str, str]
    file: str = CHART_FILE
    title: str = "ROUGE per system"
    ylabel: str = "F-measure × 100"

    @property
    def rows(self) -> dict[str, str]:
        """Table rows: the scores, then the timings."""
        return {**self.scores, "tokens_per_s": ROW_LABELS["tokens_per_s"], **TIMING_LABELS}


TIMING_LABELS = {"latency_per_batch_s": "latency/batch (s)"}
ROUGE_CHART = Chart({key: ROW_LABELS[key] for key in ROUGE_KEYS})


def format_table(systems: dict[str, dict[str, Any]], chart: Chart = ROUGE_CHART) -> str:
    """The chart's scores and the speed of each system in one column; a difference column when there are two."""
    names = list(systems)
    paired = len(names) == 2
    rows = [["metric", *names] + ([f"{names[0]} - {names[1]}"] if paired else [])]
    for key, label in TEXT_ROWS.items():
        if any(_text(systems[name].get(key)) for name in names):
            rows.append([label] + [_text(systems[name].get(key)) or "-" for name in names] + ([""] if paired else []))
    for key, label in chart.rows.items():
        values = [_number(systems[name].get(key)) for name in names]
        row = [label] + [_format(key, value) for value in values]
        if paired:
            row.append(_format_difference(key, values))
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(_join_cells(row, widths) for row in rows)


def print_table(systems: dict[str, dict[str, Any]], file: TextIO | None = None, chart: Chart = ROUGE_CHART) -> None:
    """Print `format_table(systems, chart)` to `file` (standard output by default)."""
    print(format_table(systems, chart), file=file or sys.stdout)


def write_report(
    directory: str | os.PathLike,
    results: dict[str, Any],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    chart: Chart = ROUGE_CHART,
) -> dict[str, Path]:
    """Write `results.json` (results plus library versions), the chart (`rouge.png` by default) and
    `manifest.json` as `directory`.

    `results["systems"]` maps each system's name to its scores and timings; everything else in `results`
    (settings, timings, ...) is written as given. The files go to a temporary directory that is renamed to
    `directory` once all are written (`ckptfmt.atomic_output_dir`): an error or Ctrl-C leaves no directory,
    or the earlier report as it was. An existing `directory` is replaced only with `overwrite` and only when
    it is empty or an earlier report (its manifest lists every file); `inputs` are never replaced.
    """
    systems = results.get("systems")
    if not systems or not all(isinstance(system, dict) for system in systems.values()):
        raise ReportError(f"{directory}: no systems to report (results['systems'] must map names to dicts)")
    document = {**results, "versions": {**library_versions(), **results.get("versions", {})}}
    text = json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n"
    folder = Path(directory)
    try:
        with atomic_output_dir(folder, overwrite=overwrite, inputs=inputs) as temporary:
            (temporary / RESULTS_FILE).write_text(text, encoding="utf-8")
            _draw_chart(systems, temporary / chart.file, chart)
            for name in (RESULTS_FILE, chart.file):
                os.chmod(temporary / name, 0o644)
            write_manifest(temporary)
    except CheckpointError as exc:
        raise ReportError(str(exc)) from None
    except OSError as exc:
        raise ReportError(f"{exc.filename or folder}: cannot write the report ({exc.strerror or exc})") from None
    return {"results": folder / RESULTS_FILE, "chart": folder / chart.file}


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries that shape the results."""
    versions = {"python": platform.python_version()}
    for label, distributions in VERSION_SOURCES.items():
        for distribution in distributions:
            try:
                versions[label] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def _draw_chart(systems: dict[str, dict[str, Any]], path: Path, chart: Chart) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportError(f"{chart.file}: the chart needs matplotlib (pip install matplotlib)") from exc

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    scores_axes, latency_axes = figure.subplots(1, 2, width_ratios=(2, 1))
    colors = _draw_scores(scores_axes, systems, chart)
    _draw_latencies(latency_axes, systems, colors)
    figure.savefig(path, format="png", dpi=100)


def _draw_scores(axes: Any, systems: dict[str, dict[str, Any]], chart: Chart) -> dict[str, Any]:
    """Grouped bars, one group per score of the chart; returns each system's bar color."""
    bar_width = 0.8 / len(systems)
    colors = {}
    keys = list(chart.scores)
    for index, (name, system) in enumerate(systems.items()):
        scores = [_number(system.get(key)) or 0.0 for key in keys]
        shift = (index - (len(systems) - 1) / 2) * bar_width
        mode = _text(system.get("quantization"))
        label = f"{name} [{mode}]" if mode else name
        bars = axes.bar([position + shift for position in range(len(keys))], scores, bar_width, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        colors[name] = bars.patches[0].get_facecolor()
    axes.set_xticks(range(len(keys)), list(chart.scores.values()))
    axes.set_ylabel(chart.ylabel)
    axes.set_title(chart.title)
    axes.legend()
    return colors


def _draw_latencies(axes: Any, systems: dict[str, dict[str, Any]], colors: dict[str, Any]) -> None:
    timed = {name: system for name, system in systems.items() if _number(system.get("latency_per_batch_s")) is not None}
    if timed:
        labels = [
            f"{name}\n{_format('tokens_per_s', _number(s.get('tokens_per_s')))} tok/s" for name, s in timed.items()
        ]
        latencies = [_number(system["latency_per_batch_s"]) for system in timed.values()]
        bars = axes.bar(labels, latencies, color=[colors[name] for name in timed])
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no timings", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylabel("seconds per batch")
    axes.set_title("Latency per batch")


def _json_safe(value: Any) -> Any:
    """Plain JSON: numpy/torch values as numbers or lists, NaN/inf as null, paths and other objects as text."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    return str(value)


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, NaN or non-numeric values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    """A non-empty string entry, else None."""
    return value if isinstance(value, str) and value else None


def _format(key: str, value: float | None) -> str:
    return "-" if value is None else ROW_FORMATS.get(key, "{:.2f}").format(value)


def _format_difference(key: str, values: list[float | None]) -> str:
    if None in values:
        return "-"
    first, second = values[0], values[1]
    assert first is not None and second is not None  # None in values: returned above
    text = _format(key, first - second)
    return text if text.startswith("-") else f"+{text}"


def _join_cells(row: list[str], widths: list[int]) -> str:
    return "  ".join(
        cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(row, widths))
    )
