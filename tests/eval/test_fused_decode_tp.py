"""Tensor parallel with the fused and compiled decode steps: ``mpirun -n N`` ranks (gloo on CPU, the fused
kernels in triton's interpreter; NCCL and CUDA graphs on GPUs) generate the greedy tokens of the same model
run whole in one process, at fp32 and at FP8.

Each rank steps its own heads and columns; tp rank 0 alone adds the residual and the row-parallel biases, the
partial sums are all-reduced, the vocab-split logits all-gathered (``fused_decode.FusedDecoder.row_parallel``).
The variants cover replicated KV heads (tp 4 over 1 KV head), vocab-row and hidden-column embeddings, learned
positions with biases and LayerNorm (OPT), and the parallel residual (GPT-NeoX).
"""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from ckpt_eval.fp8_quantize import quantize_fp8  # noqa: E402
from ckptfmt import CheckpointConfig  # noqa: E402
from ckptfmt.reshard import reshard  # noqa: E402
from tests.eval.fused_tp_worker import greedy  # noqa: E402
from tests.eval.test_fused_decode import BASE, VARIANTS  # noqa: E402
from tests.mpi import MPIRUN  # noqa: E402
from tests.mpi import mpirun as run_mpi  # noqa: E402
from tests.random_checkpoint import random_checkpoint  # noqa: E402
from tests.tiny_models import convert_tiny  # noqa: E402

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.slow,
    pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (openmpi-bin)"),
]


def ranks(path, *modes: str, n: int) -> dict:
    """What ``fused_tp_worker`` prints on rank 0 for ``modes``, launched on ``n`` ranks."""
    done = run_mpi(sys.executable, "-m", "tests.eval.fused_tp_worker", str(path), *modes, n=n, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_process(path) -> list:
    return greedy(str(path), "eager")[1]["tokens"]


def test_tp2_fused_and_compiled_steps_give_the_tp1_tokens(tmp_path):
    hf = tmp_path / "hf"
    tp1 = convert_tiny("llama-gqa", tmp_path / "tp1", hf_dir=hf)
    tp2 = convert_tiny("llama-gqa", tmp_path / "tp2", tp=2, hf_dir=hf)
    out = ranks(tp2, "eager", "fused", "default", "prompts", n=2)  # prompts: compiled layers, traced all-reduces
    assert out["fused"]["path"] == "fused" and out["default"]["path"] == "torch.compile default"
    expected = one_process(tp1)
    for mode in ("eager", "fused", "default", "prompts"):
        assert out[mode]["tokens"] == expected, mode


@pytest.mark.parametrize(
    "name, tp, flags",
    [
        ("llama-tied", 4, {"use_parallel_embedding": True}),  # one head per rank, the 1 KV head on every rank
        ("opt", 2, {"use_parallel_embedding": True, "embedding_sharding_dim": 1}),
        ("gptneox", 2, {}),
    ],
)  # fmt: skip
def test_fused_tp_architectures(tmp_path, name, tp, flags):
    hf = tmp_path / "hf"
    tp1 = convert_tiny(name, tmp_path / "tp1", hf_dir=hf)
    split = convert_tiny(name, tmp_path / f"tp{tp}", tp=tp, hf_dir=hf, **flags)
    out = ranks(split, "fused", n=tp)
    assert out["fused"]["path"] == "fused"
    assert out["fused"]["tokens"] == one_process(tp1)


def test_fp8_tp2_fused_gives_the_tp1_tokens(tmp_path):
    """FP8 codes and scales split by ``ckptfmt.reshard``: the tp 2 fused step reads each rank's codes."""
    tp1 = convert_tiny("llama-gqa", tmp_path / "tp1")
    fp8 = tmp_path / "fp8"
    quantize_fp8(tp1, fp8, torch.arange(3, 40).view(1, -1))
    reshard(fp8, tmp_path / "fp8-tp2", 2, 1)
    out = ranks(tmp_path / "fp8-tp2", "fused", n=2)
    assert out["fused"]["path"] == "fused"
    assert out["fused"]["tokens"] == one_process(fp8)


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_gemma_tp2_fused_gives_the_tp1_tokens(tmp_path, name):
    """Gemma 2 and 3 split by ``ckptfmt.reshard``: each sublayer's output is summed over the ranks before its norm;
    Gemma 3's q/k norm weights (per head) are on every rank."""
    config = CheckpointConfig.from_dict({**BASE, **VARIANTS[name], "num_key_value_heads": 2}).check()
    tp1 = random_checkpoint(tmp_path / "tp1", config, seed=2)
    reshard(tp1, tmp_path / "tp2", 2, 1)
    out = ranks(tmp_path / "tp2", "fused", n=2)
    assert out["fused"]["path"] == "fused"
    assert out["fused"]["tokens"] == one_process(tp1)


def test_pipeline_stages_run_eager_or_refuse(tmp_path):
    """pp 2: ``compile="auto"`` runs eager with a note on rank 0; "fused" is an error naming the reason."""
    pp2 = convert_tiny("llama-gqa", tmp_path / "pp2", pp=2)
    out = ranks(pp2, "auto", n=2)
    assert out["auto"]["path"] == "eager"
    done = run_mpi(sys.executable, "-m", "tests.eval.fused_tp_worker", str(pp2), "fused", n=2)
    assert done.returncode != 0
    assert "error: compile 'fused'" in done.stdout and "tensor parallel only (pp 2)" in done.stdout
