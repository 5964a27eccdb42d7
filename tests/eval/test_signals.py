"""Ctrl-C, SIGTERM and a closed stdout stop ckpt-summarize and ckpt-run at once: exit 130 / 143 / 141, one line,
no traceback, no report directory. Real processes of the installed console scripts on a tiny converted model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from tests.eval.summarize_helpers import save_tiny_tokenizer  # noqa: E402
from tests.tiny_models import convert_tiny  # noqa: E402

STATUS = "[ckpt-summarize] "


def script(name: str) -> list[str]:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"ckpt-eval is not installed (no {name} script)")
    return [str(path)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("signals")
    ckpt = convert_tiny("llama-gqa", base / "ckpt", hf_dir=base / "hf")
    return {"base": base, "ckpt": ckpt, "tok": save_tiny_tokenizer(base / "tok")}


def summarize(tiny, report: Path) -> subprocess.Popen:
    """ckpt-summarize over the whole shipped set, one article per batch (28 batches: seconds of work)."""
    argv = ["--checkpoint_dir", str(tiny["ckpt"]), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm"]
    argv += ["--batch_size", "1", "--max_ite", "28", "--max_input_length", "96", "--output_len", "24"]
    argv += ["--device", "cpu", "--report", str(report)]
    return subprocess.Popen(script("ckpt-summarize") + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(process: subprocess.Popen, marker: str, signum: int) -> tuple[str, str]:
    """Send ``signum`` once stderr shows a line starting with ``marker``; return (stdout, stderr) at exit."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith(marker):
            process.send_signal(signum)
            break
    out, rest = process.communicate(timeout=120)
    return out, "".join(seen) + rest


@pytest.mark.parametrize(
    ("signum", "code", "word", "marker"),
    [
        (signal.SIGINT, 130, "interrupted", STATUS + "batch 2/"),  # mid-run, between and inside generate calls
        (signal.SIGTERM, 143, "terminated", STATUS + "batch 2/"),
        (signal.SIGINT, 130, "interrupted", STATUS + "evaluating"),  # importing transformers, loading the tokenizer
        (signal.SIGTERM, 143, "terminated", STATUS + "evaluating"),
    ],
)
def test_ckpt_summarize_stops_on_a_signal(tiny, tmp_path, signum, code, word, marker):
    report = tmp_path / "report"
    process = summarize(tiny, report)
    out, err = signal_when(process, marker, signum)
    assert process.returncode == code, err
    assert "Traceback" not in err and out == ""
    assert [line for line in err.splitlines() if not line.startswith(STATUS)] == [f"ckpt-summarize: {word}"]
    assert os.listdir(tmp_path) == []  # neither the report nor a temporary directory


def test_an_uninterrupted_run_writes_the_report(tiny, tmp_path):
    """The control of the test above: the same command, left alone, finishes and writes the report."""
    process = summarize(tiny, tmp_path / "report")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert "ROUGE-1" in out and sorted(os.listdir(tmp_path / "report")) == [
        "manifest.json",
        "results.json",
        "rouge.png",
    ]


def wait_for_torch(process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until the process has mapped libtorch: past ``run_main`` and into the work (here blocked reading stdin)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        maps = Path(f"/proc/{process.pid}/maps")
        if process.poll() is not None or "libtorch_cpu" in maps.read_text():
            return
        time.sleep(0.1)
    pytest.fail("the process never imported torch")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ckpt_run_stops_on_a_signal(tiny, signum, code, word):
    argv = ["--checkpoint_dir", str(tiny["ckpt"]), "--tokenizer_dir", str(tiny["tok"]), "--input_file", "/dev/stdin"]
    process = subprocess.Popen(
        script("ckpt-run") + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_torch(process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, out, err) == (code, "", f"ckpt-run: {word}\n")


def test_ckpt_run_into_a_closed_pipe_is_quiet(tiny, tmp_path):
    """``ckpt-run ... | head -1``: the reader is gone before the first output line; exit 141, nothing on stderr."""
    (tmp_path / "ids.csv").write_text("".join(f"{i},{i + 1},{i + 2}\n" for i in range(3, 40)))
    argv = ["--checkpoint_dir", str(tiny["ckpt"]), "--input_file", str(tmp_path / "ids.csv"), "--device", "cpu"]
    process = subprocess.Popen(script("ckpt-run") + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `head -1` that has already exited
    err = process.stderr.read().decode()
    assert (process.wait(timeout=120), err) == (141, "")


def test_cli_modules_import_neither_torch_nor_transformers():
    """What a signal during start-up can interrupt before ``run_main`` took over stays small."""
    heavy = "{'torch', 'transformers', 'nltk'}"
    code = f"import sys, ckpt_eval.summarize, ckpt_eval.run_cli; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_a_report_inside_an_input_is_refused_before_the_run(tiny, tmp_path):
    """A bad --report is refused before any model runs (here: the checkpoint itself)."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny["ckpt"], copy)
    argv = ["--checkpoint_dir", str(copy), "--tokenizer_dir", str(tiny["tok"]), "--test_trt_llm", "--device", "cpu"]
    argv += ["--max_input_length", "96", "--output_len", "12"]
    done = subprocess.run(
        script("ckpt-summarize") + [*argv, "--report", str(copy / "report")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr
        == f"error: {copy / 'report'}: output directory lies inside the input {copy}; name a directory outside it\n"
    )
    assert not (copy / "report").exists()
