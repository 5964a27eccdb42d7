"""CI gates shared by ckpt-summarize, ckpt-mmlu and ckpt-perplexity: a threshold, a baseline, their verdicts.

Every task ends in ``finish``: each gate prints one line, ``--junit_xml FILE`` gets one test case per gate,
``$GITHUB_STEP_SUMMARY`` (when set) gets a Markdown table of the scores and the gates, and the exit status is
0 (every gate passed), 1 (a gate failed) or 2 (usage or input error, see ``EXIT_USAGE``).
``--baseline FILE --max_regression X`` compares each gated metric with a results.json of an earlier run: a
drop by more than X (in the metric's unit, or ``X%`` of the baseline value) fails; for a metric where lower
is better (perplexity) a rise does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

EXIT_PASS, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


class GateError(Exception):
    """A gate flag or baseline file that cannot be used; the message is one line naming it."""


@dataclass(frozen=True)
class Metric:
    """A gated score: its key in a system's scores, label, and direction."""

    key: str
    label: str
    higher_is_better: bool = True


@dataclass
class Gate:
    """One verdict: ``name`` is the JUnit test case, ``line`` what is printed."""

    name: str
    passed: bool
    line: str


def add_gate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", metavar="FILE", help="results.json of an earlier run to compare with")
    p.add_argument(
        "--max_regression",
        metavar="X",
        help="with --baseline: fail when a gated score is worse than the baseline's by more than X "
        "(the metric's unit) or X%% of the baseline value (default 0)",
    )
    p.add_argument("--junit_xml", metavar="FILE", help="write one JUnit test case per gate to FILE")


@dataclass(frozen=True)
class Regression:
    amount: float
    relative: bool

    def allowed(self, base: float) -> float:
        return abs(base) * self.amount / 100 if self.relative else self.amount


def parse_regression(text: str | None) -> Regression:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text or "0")
    if match is None:
        raise GateError(f"--max_regression {text!r}: expected a number >= 0, optionally followed by %")
    return Regression(float(match.group(1)), bool(match.group(2)))


def load_baseline(path: str | None, max_regression: str | None, task: str) -> dict | None:
    """The baseline's ``systems`` (checked before any model runs); None without ``--baseline``."""
    regression = parse_regression(max_regression)
    if path is None:
        if max_regression is not None:
            raise GateError("--max_regression needs --baseline FILE")
        return None
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateError(f"{path}: no such baseline file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GateError(f"{path}: not a readable results.json ({err})") from None
    systems = document.get("systems") if isinstance(document, dict) else None
    if not isinstance(systems, dict) or not all(isinstance(s, dict) for s in systems.values()):
        raise GateError(f"{path}: systems: missing (not a results.json of ckpt-summarize/mmlu/perplexity)")
    if document.get("task", task) != task:
        raise GateError(f"{path}: task: a {document['task']} baseline, not {task}")
    return {"path": path, "systems": systems, "regression": regression}


def match_system(name: str, baseline: dict) -> str | None:
    """The baseline system compared with ``name``: the same name, else the only "ours (...)" for an "ours"."""
    systems = baseline["systems"]
    if name in systems:
        return name
    ours = [other for other in systems if other.startswith("ours")]
    return ours[0] if name.startswith("ours") and len(ours) == 1 else None


def baseline_gates(baseline: dict, systems: dict[str, dict], metrics: list[Metric]) -> list[Gate]:
    """One gate per (system, metric) that both runs have."""
    gates = []
    for name, scores in systems.items():
        other = match_system(name, baseline)
        if other is None:
            continue
        for m in metrics:
            now, base = _number(scores.get(m.key)), _number(baseline["systems"][other].get(m.key))
            if now is None or base is None:
                continue
            allowed = baseline["regression"].allowed(base)
            worse = (base - now) if m.higher_is_better else (now - base)
            passed = worse <= allowed + 1e-9
            line = (
                f"baseline check: {name} {m.label} {now:.4g} vs {base:.4g} in {baseline['path']} ({other}), "
                f"{'worse' if worse > 0 else 'not worse'} by {abs(worse):.4g}, allowed {allowed:.4g}: "
                f"{'PASSED' if passed else 'FAILED'}"
            )
            gates.append(Gate(f"{name} {m.label} vs baseline", passed, line))
    if not gates:
        raise GateError(
            f"{baseline['path']}: no system and metric in common with this run (systems: {', '.join(systems)})"
        )
    return gates


def threshold_gate(system: str, metric: Metric, value: float, threshold: float) -> Gate:
    """``value`` of ``system`` against a threshold (at least, or at most when lower is better)."""
    passed = value >= threshold if metric.higher_is_better else value <= threshold
    sign = (">=" if passed else "<") if metric.higher_is_better else ("<=" if passed else ">")
    line = f"accuracy check: {system} {metric.label} {value:.2f} {sign} threshold {threshold:.2f}"
    return Gate(f"{system} {metric.label} threshold", passed, f"{line}: {'PASSED' if passed else 'FAILED'}")


def write_junit(path: str, suite: str, gates: list[Gate]) -> None:
    root = ElementTree.Element("testsuites")
    failures = str(sum(not g.passed for g in gates))
    node = ElementTree.SubElement(root, "testsuite", name=suite, tests=str(len(gates)), failures=failures)
    for gate in gates:
        case = ElementTree.SubElement(node, "testcase", classname=suite, name=gate.name)
        if not gate.passed:
            ElementTree.SubElement(case, "failure", message=gate.line).text = gate.line
        else:
            ElementTree.SubElement(case, "system-out").text = gate.line
    ElementTree.indent(root)
    try:
        Path(path).write_text(ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
    except OSError as err:
        raise GateError(f"--junit_xml {path}: cannot write ({err.strerror or err})") from None


def step_summary(suite: str, systems: dict[str, dict], rows: dict[str, str], gates: list[Gate]) -> str:
    """Markdown: a table of the scores (one column per system) and one line per gate."""
    names = list(systems)
    lines = [f"### {suite}", "", "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in rows.items():
        values = [_number(systems[n].get(key)) for n in names]
        if any(v is not None for v in values):
            lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in values) + " |")
    lines.append("")
    lines += [f"- {'✅' if g.passed else '❌'} {g.line}" for g in gates] or ["- no gates"]
    return "\n".join(lines) + "\n\n"


def finish(args, suite: str, systems: dict[str, dict], rows: dict[str, str], gates: list[Gate]) -> int:
    """Print the gate lines, write --junit_xml and the step summary; the exit status."""
    for gate in gates:
        print(gate.line)
    if getattr(args, "junit_xml", None):
        write_junit(args.junit_xml, suite, gates)
    summary = os.environ.get(SUMMARY_ENV)
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(step_summary(suite, systems, rows, gates))
        except OSError as err:
            raise GateError(f"{SUMMARY_ENV} {summary}: cannot write ({err.strerror or err})") from None
    return EXIT_PASS if all(g.passed for g in gates) else EXIT_FAILED


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
