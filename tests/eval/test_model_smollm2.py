"""The real SmolLM2-135M-Instruct, converted by ckpt-convert (fp32), gives transformers' greedy text."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from ckpt_convert.cli import main as convert  # noqa: E402
from ckpt_eval.run_cli import main as ckpt_run  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from tests.smollm2 import smollm2_hf_dir  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SMOLLM2_CACHE", ROOT / ".cache"))
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def hf_dir():
    try:
        return smollm2_hf_dir(CACHE)
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def checkpoint(hf_dir, tmp_path_factory):
    def make(tp: int = 1):
        out = tmp_path_factory.getbasetemp() / f"smollm2-fp32-tp{tp}"
        if not out.exists():
            assert (
                convert(
                    [
                        "hf",
                        "--model_dir",
                        str(hf_dir),
                        "--output_dir",
                        str(out),
                        "--dtype",
                        "float32",
                        "--tp_size",
                        str(tp),
                        "--quiet",
                    ]
                )
                == 0
            )
        return out

    return make


@pytest.fixture(scope="module")
def reference(hf_dir):
    """transformers' greedy continuation of each prompt, alone and unpadded (fp32)."""
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    texts = []
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(
                ids,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id,
            )
        texts.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return tok, texts


def test_greedy_text_equals_transformers(checkpoint, reference):
    tok, expected = reference
    runner = ModelRunner.from_dir(checkpoint(), device="cpu")
    batch = [torch.tensor(tok(p).input_ids) for p in PROMPTS]
    out = runner.generate(batch, max_new_tokens=NEW_TOKENS, end_id=tok.eos_token_id, return_dict=True)
    texts = [
        tok.decode(out["output_ids"][i, 0, len(p) : int(out["sequence_lengths"][i, 0])], skip_special_tokens=True)
        for i, p in enumerate(batch)
    ]
    assert texts == expected
    assert all(len(t) > 10 for t in texts)  # real text, not an immediate stop


def test_ckpt_run_prints_the_same_text(checkpoint, reference, hf_dir, capsys):
    _, expected = reference
    assert (
        ckpt_run(
            [
                "--checkpoint_dir",
                str(checkpoint()),
                "--tokenizer_dir",
                str(hf_dir),
                "--input_text",
                *PROMPTS,
                "--max_output_len",
                str(NEW_TOKENS),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    outputs = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("Output")]
    import json

    assert [json.loads(o) for o in outputs] == expected


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed (openmpi-bin)")
def test_tensor_parallel_3_under_mpirun(checkpoint, reference, hf_dir):
    """9 heads / 3 KV heads split over 3 ranks."""
    _, expected = reference
    root_flag = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    proc = subprocess.run(
        [
            "mpirun",
            *root_flag,
            "--oversubscribe",
            "-n",
            "3",
            sys.executable,
            "-m",
            "ckpt_eval.run_cli",
            "--checkpoint_dir",
            str(checkpoint(3)),
            "--tokenizer_dir",
            str(hf_dir),
            "--input_text",
            *PROMPTS,
            "--max_output_len",
            str(NEW_TOKENS),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CKPT_EVAL_TIMEOUT_S": "300"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    outputs = [json.loads(line.split(": ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("Output")]
    assert outputs == expected
