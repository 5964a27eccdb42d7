"""``ckpt-eval`` (the eval image's command): gates from environment variables on a tiny model, the combined
exit status, dispatch; the example GitHub Actions workflow parses and every command and setting it uses exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from ckpt_eval import ci

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples/github-actions/eval-gate.yml"
PIPELINE = ROOT / "containers/pipeline.sh"


def test_task_argv_from_the_environment():
    env = {"MODEL_NAME": "m", "EVAL_BACKEND": "trt", "MMLU_THRESHOLD": "42", "EVAL_BASELINE_DIR": "/b"}
    argv = ci.task_argv("mmlu", {**env, "MAX_REGRESSION": "2%", "EVAL_ARGS": "--device cpu", "MMLU_ARGS": "--ntrain 1"})
    assert argv[:5] == ["--engine_dir", "/data/engines/m", "--backend", "trt", "--test_trt_llm"]
    assert argv[argv.index("--report") + 1] == "/data/reports/m/mmlu"
    assert argv[argv.index("--junit_xml") + 1] == "/data/reports/m/junit-mmlu.xml"
    assert argv[argv.index("--accuracy_threshold") + 1] == "42" and "--check_accuracy" in argv
    assert argv[argv.index("--baseline") + 1] == "/b/mmlu/results.json" and "2%" in argv
    assert argv[-4:] == ["--device", "cpu", "--ntrain", "1"]
    summarize = ci.task_argv("summarize", {"ROUGE1_THRESHOLD": ""})
    assert summarize[:2] == ["--checkpoint_dir", "/data/checkpoints/model"] and "--check_accuracy" not in summarize
    assert summarize[summarize.index("--max_ite") + 1] == "20"


def test_dispatch(capsys):
    assert ci.main(["--help"]) == 0 and "EVAL_TASKS" in capsys.readouterr().out
    assert ci.main(["bogus"]) == 2 and capsys.readouterr().err.startswith("error: unknown command 'bogus'")
    assert ci.run_gates({"EVAL_TASKS": "mmlu,rouge"}) == 2
    assert (
        capsys.readouterr().err == "error: EVAL_TASKS: unknown task rouge (choose from summarize, mmlu, perplexity)\n"
    )


def test_gates_from_the_environment(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("ckpt_convert")
    from tests.eval.summarize_helpers import save_tiny_tokenizer
    from tests.tiny_models import convert_tiny

    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "job.md"))
    env = {
        "EVAL_TASKS": "mmlu,perplexity",
        "EVAL_MODEL_DIR": str(convert_tiny("llama-gqa", tmp_path / "ckpt")),
        "TOKENIZER_DIR": str(save_tiny_tokenizer(tmp_path / "tok")),
        "EVAL_REPORT_DIR": str(tmp_path / "reports"),
        "MMLU_THRESHOLD": "0",
        "PERPLEXITY_THRESHOLD": "1e6",
        "MMLU_ARGS": "--ntrain 1 --batch_size 8",
        "PERPLEXITY_ARGS": "--max_length 48 --stride 24 --batch_size 4",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "job.md"),
    }
    assert ci.run_gates(env) == 0
    assert capsys.readouterr().out.rstrip().endswith("gates: mmlu passed, perplexity passed")
    reports = tmp_path / "reports"
    for task in ("mmlu", "perplexity"):
        assert json.loads((reports / task / "results.json").read_text())["task"] == task
        assert ElementTree.parse(reports / f"junit-{task}.xml").getroot().find("testsuite").get("failures") == "0"
    summary = (reports / "summary.md").read_text()
    assert "### ckpt-mmlu" in summary and "### ckpt-perplexity" in summary
    assert (tmp_path / "job.md").read_text() == summary

    shutil.copytree(reports, tmp_path / "baseline")
    failing = {**env, "MMLU_THRESHOLD": "101", "EVAL_BASELINE_DIR": str(tmp_path / "baseline")}
    assert ci.run_gates(failing) == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith("gates: mmlu FAILED, perplexity passed") and out.count("baseline check:") == 2
    assert ci.run_gates({**failing, "MMLU_ARGS": "--ntrain 9"}) == 2  # input error wins over a failed gate
    assert capsys.readouterr().out.rstrip().endswith("gates: mmlu ERROR (exit 2), perplexity passed")


def workflow() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(WORKFLOW.read_text())


def test_workflow_parses_and_its_commands_exist():
    yaml = pytest.importorskip("yaml")
    flow = workflow()
    assert set(flow.get("on", flow.get(True))) == {"pull_request", "workflow_dispatch"}
    (job,) = flow["jobs"].values()
    services = set(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"])
    runs = [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines() if line.strip()]
    assert "containers/pipeline.sh hf" in runs and os.access(PIPELINE, os.X_OK)
    for line in runs:
        words = line.split()
        if words[:3] == ["docker", "compose", "build"]:
            assert set(words[3:]) <= services
        for word in words:
            if re.fullmatch(r"(containers|tests|scripts)/\S+", word):
                assert (ROOT / word).is_file(), word
    uses = {step["uses"].split("@")[0] for step in job["steps"] if "uses" in step}
    assert uses == {"actions/checkout", "actions/setup-python", "actions/upload-artifact"}
    assert any("$GITHUB_STEP_SUMMARY" in line and "reports/$MODEL_NAME/summary.md" in line for line in runs)


def test_workflow_settings_reach_the_eval_container(tmp_path):
    """Every job variable is read by compose.yaml or handed to the eval container by pipeline.sh (run with a
    ``docker`` that records its arguments), and pipeline.sh hands over every variable ckpt-eval documents."""
    env = workflow()["jobs"]["gate"]["env"]
    compose = (ROOT / "compose.yaml").read_text() + (ROOT / "compose.cpu.yaml").read_text()
    forwarded = PIPELINE.read_text().split('GATE_VARIABLES="')[1].split('"')[0].split()
    documented = set(re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", ci.__doc__)) - {"GITHUB_STEP_SUMMARY"}
    assert documented <= set(forwarded) | {"EVAL_COMMAND"}
    for name in env:
        assert name in forwarded or f"${{{name}" in compose or name in ("COMPOSE_FILE", "EVAL_COMMAND"), name
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n')
    (fake / "docker").chmod(0o755)
    calls = tmp_path / "calls"
    run_env = {"PATH": f"{fake}:{os.environ['PATH']}", "CALLS": str(calls), **{k: str(v) for k, v in env.items()}}
    done = subprocess.run(["sh", str(PIPELINE), "hf"], env=run_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    convert, build, evaluate = calls.read_text().splitlines()
    assert convert == "compose run --rm -T convert-hf" and build == "compose run --rm -T build"
    handed = re.findall(r"-e (\S+)", evaluate)
    assert evaluate.endswith(" eval gates") and set(handed) == {n for n in env if n in forwarded}


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the entrypoint as another user")
def test_image_entrypoint_checks_the_gate_report_directory():
    """`ckpt-entry ckpt-eval` (the image's default) refuses an EVAL_REPORT_DIR its user cannot write, in one line."""
    import tempfile

    with tempfile.TemporaryDirectory() as top:  # pytest's tmp_path sits under a 0700 directory
        Path(top).chmod(0o755)
        target = Path(top) / "reports"
        env = {"PATH": os.environ["PATH"], "EVAL_REPORT_DIR": str(target)}
        entry = ["sh", str(ROOT / "containers/entrypoint.sh"), "ckpt-eval"]
        done = subprocess.run(entry, capture_output=True, text=True, env=env, timeout=60, user=65534)
        assert done.returncode == 1 and done.stdout == "" and not target.exists()
        assert done.stderr.splitlines() == [
            f"ckpt-eval: error: EVAL_REPORT_DIR {target}: {top} is not writable; outputs belong under /data "
            "(the shared volume)"
        ]
