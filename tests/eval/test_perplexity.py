"""``ckpt-perplexity`` on a tiny converted model: windows cover every token once, ours equals transformers'
forward pass, the trt backend's scoring equals the torch backend's, the gate both ways, one-line errors."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from ckpt_eval.perplexity import Window, main, run_systems, windows  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from tests.eval.task_helpers import ours_flags, run_cli, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("ppl"))


def ours(tiny, *extra: str) -> list[str]:
    return [*ours_flags(tiny), "--max_length", "48", "--stride", "20", "--batch_size", "4", *extra]


def run(capsys, argv):
    return run_cli(main, capsys, argv, "ckpt-perplexity")


@pytest.mark.parametrize(
    "n, max_length, stride", [(2, 8, 3), (8, 8, 3), (9, 8, 3), (50, 8, 7), (50, 8, 1), (5, 64, 32)]
)
def test_windows_score_every_token_after_the_first_once(n, max_length, stride):
    ids = list(range(n))
    scored = []
    for w in windows(0, ids, max_length, stride):
        assert 1 <= w.start < len(w.tokens) <= max_length
        assert w.tokens == ids[w.tokens[0] : w.tokens[0] + len(w.tokens)]  # a contiguous slice
        scored += w.tokens[w.start :]
    assert scored == ids[1:]


def test_ours_and_transformers_forward_agree(tiny, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    argv = ours(tiny, "--hf_model_dir", str(tiny["hf"]), "--test_hf", "--data_type", "fp32")
    rc, out, _ = run(capsys, [*argv, "--report", str(tmp_path / "r")])
    assert rc == 0 and "perplexity" in out.splitlines()[1]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["task"] == "perplexity" and (tmp_path / "r" / "perplexity.png").is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny["hf"], dtype=torch.float32).eval()
    from ckpt_eval.perplexity import read_documents
    from ckpt_eval.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny["tok"]))
    nll = count = 0
    for d, (_, text) in enumerate(read_documents(None, "text")):
        doc_nll = 0.0
        for w in windows(d, tokenizer(text).input_ids, 48, 20):
            t = torch.tensor(w.tokens)
            with torch.no_grad():
                logp = torch.log_softmax(model(t[None]).logits[0].double(), -1)
            doc_nll -= float(logp[:-1].gather(-1, t[1:, None])[w.start - 1 :, 0].sum())
            count += len(w.tokens) - w.start
        assert results["documents"]["ours (torch)"][d]["nll"] == pytest.approx(doc_nll, rel=1e-5)
        nll += doc_nll
    for system in ("ours (torch)", "transformers"):
        assert results["systems"][system]["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_trt_backend_scores_like_the_torch_backend(tiny):
    from tests.eval.engine_network import engine_config, network_stepper

    engine = engine_config(tiny["ckpt"], max_input_len=48, max_output_len=16)
    ids = list(torch.randint(3, 250, (70,), generator=torch.Generator().manual_seed(0)).tolist())
    batches = [windows(0, ids, 48, 20), [Window(1, ids[:30], 1)]]
    systems = [("trt", ModelRunner(network_stepper(tiny["ckpt"], engine), "trt"))]
    systems.append(("torch", ModelRunner.from_dir(tiny["ckpt"], "torch", "cpu")))
    runs = run_systems(systems, batches, 2)
    assert runs["trt"]["tokens"] == runs["torch"]["tokens"] == [69, 29]
    assert runs["trt"]["nll"] == pytest.approx(runs["torch"]["nll"], rel=1e-5)


def test_gate_and_baseline(tiny, tmp_path, capsys):
    rc, out, _ = run(
        capsys, ours(tiny, "--check_accuracy", "--perplexity_threshold", "1e6", "--report", str(tmp_path / "r"))
    )
    assert rc == 0 and "<= threshold" in out
    ppl = json.loads((tmp_path / "r" / "results.json").read_text())["systems"]["ours (torch)"]["perplexity"]
    rc, out, _ = run(capsys, ours(tiny, "--check_accuracy", "--perplexity_threshold", f"{ppl - 0.5}"))
    assert rc == 1 and f"perplexity {ppl:.2f} > threshold {ppl - 0.5:.2f}: FAILED" in out
    base = json.loads((tmp_path / "r" / "results.json").read_text())
    base["systems"]["ours (torch)"]["perplexity"] = ppl * 0.9  # the baseline was better (lower)
    (tmp_path / "b.json").write_text(json.dumps(base))
    rc, out, _ = run(capsys, ours(tiny, "--baseline", str(tmp_path / "b.json"), "--max_regression", "5%"))
    assert rc == 1 and "baseline check: ours (torch) perplexity" in out and "FAILED" in out
    rc, out, _ = run(capsys, ours(tiny, "--baseline", str(tmp_path / "b.json"), "--max_regression", "12%"))
    assert rc == 0 and "PASSED" in out


def test_bad_input_is_one_line_exit_2(tiny, tmp_path, capsys):
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "A whole sentence here."}) + "\n" + json.dumps({"text": ""}) + "\n")
    rc, out, err = run(capsys, ours(tiny, "--dataset", str(short)))
    assert rc == 2 and out == "" and len(err) == 1
    assert err[0].startswith(f"error: {short}: document 1 (1): ") and "shorter than one window" in err[0]
    (tmp_path / "f.jsonl").write_text(json.dumps({"body": "text"}) + "\n")
    rc, _, err = run(capsys, ours(tiny, "--dataset", str(tmp_path / "f.jsonl")))
    assert rc == 2 and err == [f"error: {tmp_path / 'f.jsonl'}: record 0: no text field 'text' (pass --text_field)"]
    rc, _, err = run(capsys, ours(tiny, "--stride", "48"))
    assert rc == 2 and err == ["error: --stride 48: must be 1..47 (less than --max_length 48)"]
    rc, _, err = run(capsys, ours(tiny, "--max_length", "500"))
    assert rc == 2 and err == ["error: --max_length 500: must be 2..128 (the tested models' positions)"]
    rc, _, err = run(capsys, ours(tiny, "--dataset", str(tmp_path / "none.txt")))
    assert rc == 2 and err == [f"error: {tmp_path / 'none.txt'}: no such file or directory"]
