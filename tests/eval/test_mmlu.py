"""``ckpt-mmlu`` on a tiny converted model with a tiny tokenizer: the shipped set, ours vs transformers, the
threshold and baseline gates (exit codes, JUnit, step summary), the trt backend's scoring, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from ckpt_eval.mmlu import letter_ids, main, run_systems  # noqa: E402
from ckpt_eval.mmlu_data import load_subjects, shipped_dir  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckpt_eval.tokenizer import load_tokenizer  # noqa: E402
from tests.eval.task_helpers import ours_flags, run_cli, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("mmlu"))


def ours(tiny, *extra: str) -> list[str]:
    return [*ours_flags(tiny), "--batch_size", "8", "--ntrain", "2", *extra]


def run(capsys, argv):
    return run_cli(main, capsys, argv, "ckpt-mmlu")


@pytest.fixture(scope="module")
def first(tiny):
    """ours + transformers on the shipped set with every output: report, JUnit, step summary."""
    base = tiny["base"]
    summary = base / "summary.md"
    argv = ours(tiny, "--hf_model_dir", str(tiny["hf"]), "--test_hf", "--data_type", "fp32", "--check_accuracy")
    argv += ["--accuracy_threshold", "0", "--report", str(base / "report"), "--junit_xml", str(base / "j.xml")]
    mp = pytest.MonkeyPatch()
    mp.setenv("GITHUB_STEP_SUMMARY", str(summary))
    try:
        rc = main(argv)
    finally:
        mp.undo()
    return rc, json.loads((base / "report" / "results.json").read_text()), base


def test_shipped_set_ours_equals_transformers(first):
    rc, results, base = first
    assert rc == 0
    assert results["task"] == "mmlu" and results["dataset"]["questions"] == 40
    predictions = results["predictions"]
    assert predictions["ours (torch)"] == predictions["transformers"] and len(predictions["transformers"]) == 40
    ours_scores = results["systems"]["ours (torch)"]
    right = sum(p == q["answer"] for p, q in zip(predictions["ours (torch)"], results["questions"]))
    assert ours_scores["accuracy"] == pytest.approx(100 * right / 40)
    assert set(k for k in ours_scores if k.startswith("category:")) == {
        "category:STEM",
        "category:humanities",
        "category:other",
        "category:social sciences",
    }
    assert (base / "report" / "mmlu.png").read_bytes()[:4] == b"\x89PNG"


def test_junit_and_step_summary(first):
    _, results, base = first
    suite = ElementTree.parse(base / "j.xml").getroot().find("testsuite")
    assert suite.get("name") == "ckpt-mmlu" and suite.get("tests") == "1" and suite.get("failures") == "0"
    summary = (base / "summary.md").read_text()
    accuracy = results["systems"]["ours (torch)"]["accuracy"]
    assert summary.startswith("### ckpt-mmlu") and f"| accuracy (%) | {accuracy:.4g} | {accuracy:.4g} |" in summary
    assert "✅ accuracy check: ours (torch) accuracy" in summary


def test_gate_fails_above_the_score(tiny, first, capsys, tmp_path):
    accuracy = first[1]["systems"]["ours (torch)"]["accuracy"]
    junit = tmp_path / "j.xml"
    argv = ours(tiny, "--check_accuracy", "--accuracy_threshold", f"{accuracy + 0.01}", "--junit_xml", str(junit))
    rc, out, _ = run(capsys, argv)
    assert rc == 1 and f"accuracy {accuracy:.2f} < threshold {accuracy + 0.01:.2f}: FAILED" in out
    failure = ElementTree.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "FAILED" in failure.get("message")


def test_baseline_regression(tiny, first, capsys, tmp_path):
    _, results, base = first
    accuracy = results["systems"]["ours (torch)"]["accuracy"]
    rc, out, _ = run(capsys, ours(tiny, "--baseline", str(base / "report" / "results.json")))
    assert rc == 0 and "baseline check: ours (torch) accuracy" in out and out.rstrip().endswith("PASSED")
    better = json.loads(json.dumps(results))
    better["systems"]["ours (torch)"]["accuracy"] = accuracy + 10
    (tmp_path / "better.json").write_text(json.dumps(better))
    rc, out, _ = run(capsys, ours(tiny, "--baseline", str(tmp_path / "better.json"), "--max_regression", "5"))
    assert rc == 1 and "worse by 10, allowed 5: FAILED" in out
    rc, out, _ = run(capsys, ours(tiny, "--baseline", str(tmp_path / "better.json"), "--max_regression", "10"))
    assert rc == 0, out


def test_trt_backend_answers_like_the_torch_backend(tiny):
    from tests.eval.engine_network import engine_config, network_stepper

    tokenizer = load_tokenizer(str(tiny["tok"]))
    subject = load_subjects(None, 0)[0]
    prompts = [tokenizer(subject.prompt(q, 0)).input_ids for q in subject.test[:4]]
    engine = engine_config(tiny["ckpt"], max_input_len=120, max_output_len=8)
    systems = [("trt", ModelRunner(network_stepper(tiny["ckpt"], engine), "trt"))]
    systems.append(("torch", ModelRunner.from_dir(tiny["ckpt"], "torch", "cpu")))
    runs = run_systems(systems, prompts, letter_ids(tokenizer), 2)
    assert runs["trt"]["choices"] == runs["torch"]["choices"]
    torch.testing.assert_close(torch.tensor(runs["trt"]["logprobs"]), torch.tensor(runs["torch"]["logprobs"]))


def copy_shipped(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(shipped_dir(), data)
    return data


def test_bad_input_is_one_line_exit_2(tiny, capsys, tmp_path):
    data = copy_shipped(tmp_path)
    bad = data / "test" / "world_geography_test.csv"
    bad.write_text(bad.read_text().replace(",B\n", "\n", 1))
    rc, out, err = run(capsys, ours(tiny, "--data_dir", str(data)))
    assert rc == 2 and out == "" and len(err) == 1
    assert (
        err[0].startswith(f"error: {bad}: row ")
        and "expected 6 columns (question, A, B, C, D, answer), got 5" in err[0]
    )

    data = copy_shipped(tmp_path / "2")
    (data / "dev" / "basic_science_dev.csv").unlink()
    rc, _, err = run(capsys, ours(tiny, "--data_dir", str(data)))
    assert rc == 2 and err == [
        f"error: {data / 'dev' / 'basic_science_dev.csv'}: subject basic_science has 0 dev examples, --ntrain 2 needs 2"
    ]
    rc, _, err = run(capsys, ours(tiny, "--ntrain", "6"))
    assert rc == 2 and len(err) == 1 and "has 5 dev examples, --ntrain 6 needs 6" in err[0]

    rc, _, err = run(capsys, ours(tiny, "--baseline", str(tmp_path / "none.json")))
    assert rc == 2 and err == [f"error: {tmp_path / 'none.json'}: no such baseline file"]
    rc, _, err = run(capsys, ours(tiny, "--max_regression", "1"))
    assert rc == 2 and err == ["error: --max_regression needs --baseline FILE"]
    (tmp_path / "ppl.json").write_text(json.dumps({"task": "perplexity", "systems": {"ours (torch)": {}}}))
    rc, _, err = run(capsys, ours(tiny, "--baseline", str(tmp_path / "ppl.json"), "--max_regression", "x"))
    assert rc == 2 and err == ["error: --max_regression 'x': expected a number >= 0, optionally followed by %"]
    rc, _, err = run(capsys, ours(tiny, "--baseline", str(tmp_path / "ppl.json")))
    assert rc == 2 and err == [f"error: {tmp_path / 'ppl.json'}: task: a perplexity baseline, not mmlu"]


def test_engine_directory_is_checked_before_anything_runs(tiny, capsys, tmp_path):
    """--engine_dir selects the trt backend; an engine directory that is not one is one line, exit 2."""
    (tmp_path / "engine").mkdir()
    argv = ["--engine_dir", str(tmp_path / "engine"), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm"]
    rc, out, err = run(capsys, argv)
    assert (
        rc == 2
        and out == ""
        and err == [f"error: {tmp_path / 'engine' / 'config.json'}: missing (not an engine directory?)"]
    )
