"""The shared CI gates: baseline comparison both directions, JUnit files, the step summary, and ckpt-summarize
wired to them (exit 0 / 1 / 2)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest

from ckpt_eval.gates import (
    GateError,
    Metric,
    baseline_gates,
    finish,
    load_baseline,
    parse_regression,
    threshold_gate,
)

ACC = Metric("accuracy", "accuracy")
PPL = Metric("perplexity", "perplexity", higher_is_better=False)


def baseline(tmp_path, systems: dict, max_regression: str | None = None) -> dict:
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"task": "mmlu", "systems": systems}))
    return load_baseline(str(path), max_regression, "mmlu")


def test_regression_absolute_and_relative():
    assert parse_regression(None).allowed(50) == 0
    assert parse_regression("2.5").allowed(50) == 2.5
    assert parse_regression("10%").allowed(50) == 5
    with pytest.raises(GateError, match="expected a number"):
        parse_regression("-1")


def test_baseline_direction_and_system_matching(tmp_path):
    base = baseline(tmp_path, {"ours (torch)": {"accuracy": 50.0, "perplexity": 10.0}}, "1")
    gates = baseline_gates(base, {"ours (trt)": {"accuracy": 49.0, "perplexity": 11.5}}, [ACC, PPL])
    assert [g.passed for g in gates] == [True, False]  # accuracy down by 1 (allowed), perplexity up by 1.5
    assert "ours (trt) perplexity 11.5 vs 10" in gates[1].line and "(ours (torch))" in gates[1].line
    better = baseline_gates(base, {"ours (trt)": {"accuracy": 60.0, "perplexity": 8.0}}, [ACC, PPL])
    assert all(g.passed for g in better) and "not worse by 10" in better[0].line
    with pytest.raises(GateError, match="no system and metric in common"):
        baseline_gates(base, {"transformers": {"accuracy": 1.0}}, [ACC])


def test_threshold_gate_lines():
    assert threshold_gate("ours", ACC, 30.0, 30.0).passed
    failed = threshold_gate("ours", PPL, 12.0, 11.0)
    assert not failed.passed and failed.line == "accuracy check: ours perplexity 12.00 > threshold 11.00: FAILED"


def test_finish_writes_junit_and_summary(tmp_path, monkeypatch, capsys):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    gates = [threshold_gate("ours", ACC, 40.0, 30.0), threshold_gate("ours", PPL, 12.0, 11.0)]
    args = SimpleNamespace(junit_xml=str(tmp_path / "j.xml"))
    systems = {"ours": {"accuracy": 40.0, "perplexity": 12.0}}
    assert finish(args, "ckpt-x", systems, {"accuracy": "acc", "perplexity": "ppl", "missing": "m"}, gates) == 1
    assert capsys.readouterr().out.splitlines() == [g.line for g in gates]
    suite = ElementTree.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is None and cases[1].find("failure").get("message") == gates[1].line
    text = summary.read_text()
    assert text.startswith("earlier step\n### ckpt-x\n") and "| acc | 40 |" in text and "| m |" not in text
    assert f"❌ {gates[1].line}" in text
    assert finish(SimpleNamespace(junit_xml=None), "ckpt-x", systems, {}, gates[:1]) == 0


def test_bad_baselines(tmp_path):
    (tmp_path / "x.json").write_text("[1]")
    with pytest.raises(GateError, match="x.json: systems: missing"):
        load_baseline(str(tmp_path / "x.json"), None, "mmlu")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(GateError, match="y.json: not a readable results.json"):
        load_baseline(str(tmp_path / "y.json"), None, "mmlu")
    (tmp_path / "z.json").write_text(json.dumps({"task": "summarize", "systems": {"ours": {}}}))
    with pytest.raises(GateError, match="z.json: task: a summarize baseline, not mmlu"):
        load_baseline(str(tmp_path / "z.json"), None, "mmlu")


def test_summarize_baseline_and_junit(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("ckpt_convert")
    from ckpt_eval.summarize import main
    from tests.eval.summarize_helpers import save_tiny_tokenizer
    from tests.tiny_models import convert_tiny

    ckpt = convert_tiny("llama-gqa", tmp_path / "ckpt")
    tok = save_tiny_tokenizer(tmp_path / "tok")
    argv = ["--checkpoint_dir", str(ckpt), "--tokenizer_dir", str(tok), "--test_trt_llm", "--max_ite", "1"]
    argv += ["--batch_size", "2", "--max_input_length", "64", "--output_len", "8"]
    assert main([*argv, "--report", str(tmp_path / "r")]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["task"] == "summarize" and results["gates"] == []
    results["systems"]["ours (torch)"]["rouge1"] += 3
    (tmp_path / "b.json").write_text(json.dumps(results))
    capsys.readouterr()
    junit = tmp_path / "j.xml"
    rc = main([*argv, "--baseline", str(tmp_path / "b.json"), "--max_regression", "1", "--junit_xml", str(junit)])
    out = capsys.readouterr().out
    assert rc == 1 and "baseline check: ours (torch) ROUGE-1" in out and "worse by 3, allowed 1: FAILED" in out
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "ckpt-summarize" and suite.get("tests") == "4" and suite.get("failures") == "1"
    assert main([*argv, "--baseline", str(tmp_path / "b.json"), "--max_regression", "3"]) == 0
