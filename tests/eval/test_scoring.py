"""``ModelRunner.score`` / ``next_logprobs`` on every backend against transformers' own forward pass: the torch
and hf backends (context logits, one pass) and the trt backend's ``EngineStepper`` (prefill + one step per
scored token) with the builder's network standing in for TensorRT."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")
pytest.importorskip("ckpt_build")

from ckpt_eval.backends import RunnerError  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from tests.eval.engine_network import network_stepper  # noqa: E402
from tests.tiny_models import VOCAB, convert_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("scoring")
    ckpt = convert_tiny("llama-gqa", base / "ckpt", hf_dir=base / "hf")
    return {"ckpt": ckpt, "hf": base / "hf"}


def sequences():
    g = torch.Generator().manual_seed(3)
    lengths, starts = [9, 17, 4, 12], [5, 1, 3, 11]
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in lengths], starts


def reference(hf_dir, seqs, starts):
    """Per-token log-probabilities from transformers, one unpadded sequence at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for seq, start in zip(seqs, starts):
            logits = model(seq[None]).logits[0].double()
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, seq[1:, None])[:, 0]
            greedy = logits[:-1].argmax(-1) == seq[1:]
            out.append((lp[start - 1 :], greedy[start - 1 :]))
    return out


@pytest.fixture(scope="module")
def runners(tiny):
    return {
        "torch": ModelRunner.from_dir(tiny["ckpt"], "torch", "cpu"),
        "hf": ModelRunner.from_dir(tiny["hf"], "hf", "cpu", dtype="fp32"),
        "trt": ModelRunner(network_stepper(tiny["ckpt"]), "trt"),
    }


@pytest.mark.parametrize("backend", ["torch", "hf", "trt"])
def test_scores_equal_transformers_forward(tiny, runners, backend):
    seqs, starts = sequences()
    want = reference(tiny["hf"], seqs, starts)
    got = runners[backend].score(seqs, starts)
    assert [s.logprobs.numel() for s in got] == [n.numel() - s for n, s in zip(seqs, starts)]
    for (lp, greedy), scores in zip(want, got):
        torch.testing.assert_close(scores.logprobs, lp, atol=1e-4, rtol=1e-4)
        assert torch.equal(scores.greedy, greedy)


@pytest.mark.parametrize("backend", ["torch", "hf", "trt"])
def test_next_logprobs_equal_transformers_last_position(tiny, runners, backend):
    from transformers import AutoModelForCausalLM

    seqs, _ = sequences()
    ids = [5, 17, 200]
    model = AutoModelForCausalLM.from_pretrained(tiny["hf"], dtype=torch.float32).eval()
    with torch.no_grad():
        want = torch.stack([torch.log_softmax(model(s[None]).logits[0, -1].double(), -1)[ids] for s in seqs])
    torch.testing.assert_close(runners[backend].next_logprobs(seqs, ids), want, atol=1e-4, rtol=1e-4)


def test_long_rows_are_scored_in_chunks(runners, monkeypatch):
    import ckpt_eval.scoring as scoring

    seqs, starts = sequences()
    whole = runners["torch"].score(seqs, starts)
    monkeypatch.setattr(scoring, "CHUNK", 3)  # every row crosses chunk borders
    for a, b in zip(runners["torch"].score(seqs, starts), whole):
        assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.greedy, b.greedy)


def test_bad_scoring_input_is_one_line(runners):
    with pytest.raises(RunnerError, match="sequence 0: start 0 must leave context"):
        runners["torch"].score([torch.tensor([1, 2, 3])], [0])
    with pytest.raises(RunnerError, match="sequence 0: start 3 must leave"):
        runners["torch"].score([torch.tensor([1, 2, 3])], [3])
    with pytest.raises(RunnerError, match="outside the vocabulary"):
        runners["torch"].score([torch.tensor([1, VOCAB])], [1])
