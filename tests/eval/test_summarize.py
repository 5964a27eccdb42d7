"""``ckpt-summarize`` on a tiny converted model (torch backend) against transformers, with a tiny tokenizer:
the accuracy gate both ways, the report files, the tokenizer lookup, one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from ckpt_eval.summarize import main  # noqa: E402
from tests.eval.summarize_helpers import save_tiny_tokenizer  # noqa: E402
from tests.tiny_models import convert_tiny  # noqa: E402

SMALL = ["--batch_size", "4", "--max_ite", "2", "--max_input_length", "96", "--output_len", "12", "--data_type", "fp32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("summarize")
    hf = base / "hf"
    ckpt = convert_tiny("llama-gqa", base / "ckpt", hf_dir=hf)
    tok = save_tiny_tokenizer(base / "tok")
    return {"base": base, "hf": hf, "ckpt": ckpt, "tok": tok}


def both(tiny, *extra: str) -> list[str]:
    return [
        "--backend",
        "torch",
        "--checkpoint_dir",
        str(tiny["ckpt"]),
        "--hf_model_dir",
        str(tiny["hf"]),
        "--tokenizer_dir",
        str(tiny["tok"]),
        "--test_trt_llm",
        "--test_hf",
        *SMALL,
        *extra,
    ]


def error_lines(err: str) -> list[str]:
    """stderr without ckpt-summarize's status lines (the first comes before it loads the tokenizer and models)."""
    return [line for line in err.strip().splitlines() if not line.startswith("[ckpt-summarize] ")]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def first_report(tiny):
    """One full run (ours + transformers, threshold 0, report) shared by several tests."""
    report = tiny["base"] / "report"
    assert main(both(tiny, "--check_accuracy", "--tensorrt_llm_rouge1_threshold", "0", "--report", str(report))) == 0
    return json.loads((report / "results.json").read_text()), report


def test_report_files(first_report):
    results, report = first_report
    systems = results["systems"]
    assert list(systems) == ["ours (torch)", "transformers"]
    for scores in systems.values():
        keys = {"quantization", "rouge1", "rouge2", "rougeL", "rougeLsum", "tokens_per_s", "latency_per_batch_s"}
        assert set(scores) == keys
        assert scores["tokens_per_s"] > 0 and scores["latency_per_batch_s"] > 0
    assert results["dataset"]["articles"] == 8
    assert [len(p) for p in results["predictions"].values()] == [8, 8]
    # fp32 greedy through the same loop: identical summaries, identical scores
    assert results["predictions"]["ours (torch)"] == results["predictions"]["transformers"]
    assert systems["ours (torch)"]["rouge1"] == systems["transformers"]["rouge1"]
    assert systems["ours (torch)"]["quantization"] == "none"
    assert systems["transformers"]["quantization"] == "none (transformers, float32)"
    assert len(results["timings"]["ours (torch)"]["seconds_per_batch"]) == 2
    assert results["settings"]["batch_size"] == 4 and results["settings"]["backend"] == "torch"
    assert results["accuracy"]["passed"] is True and results["versions"]["torch"]
    assert (report / "rouge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_fails_just_above_the_score_and_reports_the_difference(tiny, first_report, capsys):
    rouge1 = first_report[0]["systems"]["ours (torch)"]["rouge1"]
    assert rouge1 > 0  # otherwise the threshold below could not sit under it
    rc, out, err = run(capsys, both(tiny, "--check_accuracy", "--tensorrt_llm_rouge1_threshold", f"{rouge1 + 0.01}"))
    assert rc == 1
    assert f"accuracy check: ours (torch) ROUGE-1 {rouge1:.2f} < threshold {rouge1 + 0.01:.2f}" in out
    assert "(transformers " in out and "difference +0.00): FAILED" in out
    header, modes, rouge1_row = out.splitlines()[:3]
    assert "ours (torch) - transformers" in header and "ROUGE-1" in rouge1_row
    assert modes.split() == ["quantization", "none", "none", "(transformers,", "float32)"]


def test_gate_passes_just_below_the_score(tiny, first_report, capsys):
    rouge1 = first_report[0]["systems"]["ours (torch)"]["rouge1"]
    argv = [
        "--checkpoint_dir",
        str(tiny["ckpt"]),
        "--tokenizer_dir",
        str(tiny["tok"]),
        "--test_trt_llm",
        *SMALL,
        "--check_accuracy",
        "--tensorrt_llm_rouge1_threshold",
        f"{rouge1 - 0.01}",
    ]
    rc, out, _ = run(capsys, argv)
    assert rc == 0 and f"ROUGE-1 {rouge1:.2f} >= threshold" in out and out.rstrip().endswith("PASSED")
    assert "transformers" not in out


def test_without_check_accuracy_a_low_score_is_not_an_error(tiny, capsys):
    argv = ["--checkpoint_dir", str(tiny["ckpt"]), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm", *SMALL]
    rc, out, _ = run(capsys, argv + ["--max_ite", "1"])
    assert rc == 0 and "accuracy check" not in out and "ROUGE-1" in out


def test_tokenizer_comes_from_the_checkpoint_directory(tiny, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny["ckpt"], ckpt)
    shutil.copytree(tiny["tok"], ckpt / "tokenizer")
    rc, _, err = run(
        capsys,
        ["--checkpoint_dir", str(ckpt), "--test_trt_llm", *SMALL, "--max_ite", "1", "--report", str(tmp_path / "r")],
    )
    assert rc == 0, err
    settings = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]
    assert settings["tokenizer_dir"] == str(ckpt / "tokenizer")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tiny):
    base = tiny["base"] / "bad"
    base.mkdir()
    (base / "empty_engine").mkdir()
    write_jsonl(base / "fields.jsonl", [{"text": "An article.", "summary": "A summary."}])
    big = save_tiny_tokenizer(base / "tok400", vocab_size=400)
    other_hf = base / "hf300"
    shutil.copytree(tiny["hf"], other_hf)
    config = json.loads((other_hf / "config.json").read_text())
    (other_hf / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    return {"base": base, "big_tok": big, "other_hf": other_hf}


BAD = {
    "missing dataset": (lambda t, b: ["--dataset", str(b["base"] / "nope.jsonl")], "nope.jsonl: no such dataset file"),
    "wrong fields": (
        lambda t, b: ["--dataset", str(b["base"] / "fields.jsonl")],
        "fields.jsonl: record 0 is missing field article, highlights (fields present: summary, text)",
    ),
    "tokenizer mismatch": (
        lambda t, b: ["--tokenizer_dir", str(b["big_tok"])],
        "tokenizer mismatch: {big_tok} has 400 tokens but {ckpt} has vocab_size 250",
    ),
    "models disagree": (
        lambda t, b: ["--test_hf", "--hf_model_dir", str(b["other_hf"])],
        "vocabulary mismatch between the tested models ({ckpt} 250, {other_hf} 300)",
    ),
    "beams": (lambda t, b: ["--num_beams", "2"], "--num_beams 2: beam search is not supported"),
    "sampling": (lambda t, b: ["--top_p", "2"], "top_p must be within [0, 1], got 2.0"),
    "nothing to test": (None, "nothing to evaluate: pass --test_trt_llm"),
    "hf without dir": (lambda t, b: ["--test_hf"], "--test_hf needs --hf_model_dir"),
    "no tokenizer": (lambda t, b: ["--tokenizer_dir", str(b["base"] / "none")], "tokenizer directory does not exist"),
    "prompt too long for the model": (
        lambda t, b: ["--max_input_length", "120"],
        "--max_input_length 120 + --output_len 12 exceed max_position_embeddings 128 of {ckpt}; "
        "pass --max_input_length 116 or less",
    ),
    "summary too long for the model": (
        lambda t, b: ["--output_len", "128"],
        "--output_len 128: {ckpt} has max_position_embeddings 128, which leaves no room for the prompt",
    ),
    "report inside the checkpoint": (
        lambda t, b: ["--report", str(t["ckpt"] / "report")],
        "{ckpt}/report: output directory lies inside the input {ckpt}",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(tiny, bad_inputs, case, capsys):
    extra, message = BAD[case]
    report = bad_inputs["base"] / f"report-{case.replace(' ', '-')}"
    if extra is None:
        argv = ["--checkpoint_dir", str(tiny["ckpt"]), "--tokenizer_dir", str(tiny["tok"])]
    else:
        argv = [
            "--checkpoint_dir",
            str(tiny["ckpt"]),
            "--tokenizer_dir",
            str(tiny["tok"]),
            "--test_trt_llm",
            *extra(tiny, bad_inputs),
        ]
    rc, out, err = run(capsys, [*argv, *SMALL, "--report", str(report), *(extra(tiny, bad_inputs) if extra else [])])
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert len(err.strip().splitlines()) <= 2  # at most the first status line before the error
    assert message.format(big_tok=bad_inputs["big_tok"], ckpt=tiny["ckpt"], other_hf=bad_inputs["other_hf"]) in lines[0]
    assert not report.exists() and "ROUGE" not in out


def test_console_script_engine_dir_without_config(tiny, bad_inputs):
    script = shutil.which("ckpt-summarize") or str(Path(sys.executable).parent / "ckpt-summarize")
    if not Path(script).is_file():
        pytest.skip("ckpt-eval is not installed (no ckpt-summarize script)")
    done = subprocess.run(
        [
            script,
            "--engine_dir",
            str(bad_inputs["base"] / "empty_engine"),
            "--tokenizer_dir",
            str(tiny["tok"]),
            "--test_trt_llm",
            "--max_ite",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.strip()
        == f"error: {bad_inputs['base'] / 'empty_engine' / 'config.json'}: missing (not an engine directory?)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without GPU")
def test_trt_backend_on_this_machine_says_what_is_missing(tiny, tmp_path, capsys):
    """An engine config whose plans cannot run here (no GPU): one line naming what to do, before TensorRT."""
    from tests.eval.engine_network import engine_config

    engine = tmp_path / "engine"
    engine.mkdir()
    engine_config(tiny["ckpt"]).save(engine)
    (engine / "rank0.engine").write_bytes(b"plan")
    rc, _, err = run(
        capsys, ["--engine_dir", str(engine), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm", *SMALL]
    )
    assert rc == 2 and len(error_lines(err)) == 1, err  # after the first status line: the engine was opened
    assert f"error: {engine}: engines built by tensorrt_rtx 1.7.1.116 for sm80,sm86 cannot run here: " in err
    assert "TensorRT engines run only on a CUDA GPU" in err


def test_speed_ratio_of_the_interleaved_systems(first_report):
    results = first_report[0]
    ratio, systems = results["speed_ratio"], results["systems"]
    assert ratio["batches"] == 2 and ratio["median"] > 0
    assert ratio["overall"] == pytest.approx(
        systems["ours (torch)"]["tokens_per_s"] / systems["transformers"]["tokens_per_s"]
    )
    assert results["timings"]["transformers"]["order"] == "interleaved"


def test_the_default_prompt_length_is_lowered_to_fit_the_model(tiny, capsys):
    """summarize.py's defaults (923 + 100) do not fit a 128-position model: the prompt length gives way."""
    argv = ["--checkpoint_dir", str(tiny["ckpt"]), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm"]
    rc, out, err = run(capsys, [*argv, "--max_ite", "1", "--output_len", "12", "--device", "cpu"])
    assert rc == 0 and "ROUGE-1" in out, err
    assert (
        f"[ckpt-summarize] --max_input_length lowered from its default 923 to 116: {tiny['ckpt']} has "
        "max_position_embeddings 128 and --output_len is 12"
    ) in err.splitlines()


def test_dtype_spellings(tiny, capsys):
    from ckpt_eval.runner import ModelRunner
    from ckpt_eval.summarize import build_parser

    for flag, spelling, dtype in [("--dtype", "half", "float16"), ("--data_type", "BF16", "bfloat16")]:
        assert build_parser().parse_args([flag, spelling]).data_type == dtype
    assert build_parser().parse_args(["--dtype", "fp32"]).data_type == "float32"
    assert build_parser().parse_args([]).data_type == "float16"  # summarize.py's default
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--dtype", "fp8"])
    assert stop.value.code == 2 and "argument --data_type/--dtype: dtype 'fp8': not one of" in capsys.readouterr().err
    runner = ModelRunner.from_dir(tiny["hf"], backend="hf", device="cpu", dtype="half")
    assert runner.model.model.dtype == torch.float16


def test_a_corrupt_rank_file_fails_unless_skip_checksum(tiny, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny["ckpt"], ckpt)
    with open(ckpt / "rank0.safetensors", "r+b") as f:
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 0x10]))
    argv = ["--checkpoint_dir", str(ckpt), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm", *SMALL]
    rc, out, err = run(capsys, [*argv, "--max_ite", "1", "--report", str(tmp_path / "report")])
    assert rc == 2 and out == "" and not (tmp_path / "report").exists()
    assert error_lines(err) == [
        f"error: {ckpt / 'rank0.safetensors'}: sha256 checksum mismatch with manifest.json "
        "(corrupt file; --skip_checksum ignores it)"
    ]
    rc, out, err = run(capsys, [*argv, "--max_ite", "1", "--skip_checksum"])
    assert rc == 0 and "ROUGE-1" in out, err
