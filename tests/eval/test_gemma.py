"""Gemma 1, 2 and 3 (text): tiny random transformers models -> ckpt-convert hf -> the torch backend.

fp32, at tp/pp (1, 1), (2, 1) and (1, 2): logits within 1e-4 relative error of transformers and 32 identical
greedy tokens, for a batch of prompts of different lengths (left padded; the reference runs each alone).
The window (6) is far shorter than prompt + 32 tokens, Gemma 3's global layer (the third of 3) lies on the
second pipeline stage, and the caps are small enough to bite. ``python -m tests.eval.test_gemma OUT CKPT...``
is the mpirun worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from ckpt_eval.runner import ModelRunner  # noqa: E402
from tests.eval.test_model_parity import (  # noqa: E402
    FP32_TOL,
    assert_matches_reference,
    prompts,
    reference,
    run_ours,
)
from tests.mpi import MPIRUN, mpirun  # noqa: E402
from tests.tiny_models import _randomize, convert_tiny  # noqa: E402

SIZES = dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_attention_heads=4, max_position_embeddings=128)
# name -> (transformers config class, kwargs): head_dim 24 != 64 / 4
GEMMAS: dict[str, tuple[str, dict]] = {
    "gemma": ("GemmaConfig", dict(SIZES, num_hidden_layers=2, num_key_value_heads=1, head_dim=24)),  # MQA
    "gemma2": (
        "Gemma2Config",
        dict(
            SIZES,
            num_hidden_layers=2,
            num_key_value_heads=2,
            head_dim=24,
            sliding_window=6,
            query_pre_attn_scalar=20,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            SIZES,
            num_hidden_layers=3,
            num_key_value_heads=2,
            head_dim=24,
            sliding_window=6,
            sliding_window_pattern=3,
            query_pre_attn_scalar=20,
            final_logit_softcapping=3.0,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
            },
        ),
    ),
}
LAYOUTS = [(2, 1), (1, 2)]


def make_gemma_hf(name: str, path: Path, seed: int = 0, **overrides) -> Path:
    """Tiny random Gemma ``name`` saved with save_pretrained at ``path`` (made once)."""
    if not (path / "config.json").exists():
        cls, kwargs = GEMMAS[name]
        config = getattr(transformers, cls)(**{**kwargs, **overrides})
        model = transformers.AutoModelForCausalLM.from_config(config)
        _randomize(model, seed)
        model.eval().save_pretrained(path)
    return path


class Gemmas:
    """HF directories and conversions under one temp dir."""

    def __init__(self, root: Path):
        self.root = root

    def hf_dir(self, name: str) -> Path:
        return make_gemma_hf(name, self.root / f"hf-{name}")

    def hf(self, name: str):
        model = transformers.AutoModelForCausalLM.from_pretrained(self.hf_dir(name), dtype=torch.float32)
        model.generation_config.eos_token_id = None  # exactly STEPS tokens, like ours without end_id
        model.generation_config.pad_token_id = 0
        return model.eval()

    def checkpoint(self, name: str, tp: int = 1, pp: int = 1) -> Path:
        out = self.root / f"ckpt-{name}-tp{tp}pp{pp}"
        if not (out / "config.json").exists():
            convert_tiny(name, out, tp=tp, pp=pp, hf_dir=self.hf_dir(name))
        return out


@pytest.fixture(scope="module")
def gemmas(tmp_path_factory):
    return Gemmas(tmp_path_factory.mktemp("gemma"))


@pytest.mark.parametrize("name", GEMMAS)
def test_fp32_parity_with_transformers(gemmas, name):
    batch = prompts()
    ours = run_ours(ModelRunner.from_dir(gemmas.checkpoint(name), device="cpu"), batch)
    assert_matches_reference(ours, reference(gemmas.hf(name), batch), batch, FP32_TOL)


def test_unpadded_batch_takes_the_plain_causal_path(gemmas):
    """Gemma 1 has no window and no attention cap: prompts of one length run SDPA's causal kernel."""
    gen = torch.Generator().manual_seed(5)
    batch = [torch.randint(1, 250, (6,), generator=gen) for _ in range(3)]
    ours = run_ours(ModelRunner.from_dir(gemmas.checkpoint("gemma"), device="cpu"), batch)
    assert_matches_reference(ours, reference(gemmas.hf("gemma"), batch), batch, FP32_TOL)


def result_file(out: Path, ckpt: str | Path, rank: int) -> Path:
    return out / f"{Path(ckpt).name}.rank{rank}.pt"


def worker(out: Path, checkpoints: list[str]) -> None:
    for ckpt in checkpoints:
        runner = ModelRunner.from_dir(ckpt, device="cpu")
        torch.save(run_ours(runner, prompts()), result_file(out, ckpt, runner.rank))


@pytest.fixture(scope="module")
def multi_rank(gemmas, tmp_path_factory):
    """Every (name, tp, pp) of LAYOUTS run under one mpirun call; the results directory."""
    if MPIRUN is None:
        pytest.skip("mpirun not installed (openmpi-bin)")
    out = tmp_path_factory.mktemp("gemma-mpi")
    dirs = [str(gemmas.checkpoint(name, tp, pp)) for name in GEMMAS for tp, pp in LAYOUTS]
    proc = mpirun(sys.executable, "-m", "tests.eval.test_gemma", str(out), *dirs, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.mpi
@pytest.mark.parametrize(("tp", "pp"), LAYOUTS)
@pytest.mark.parametrize("name", GEMMAS)
def test_multi_rank_parity_with_transformers(gemmas, multi_rank, name, tp, pp):
    ckpt = gemmas.checkpoint(name, tp, pp)
    ranks = [torch.load(result_file(multi_rank, ckpt, r), weights_only=True) for r in range(tp * pp)]
    for other in ranks[1:]:
        assert torch.equal(other["output_ids"], ranks[0]["output_ids"])
    batch = prompts()
    assert_matches_reference(ranks[0], reference(gemmas.hf(name), batch), batch, FP32_TOL)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2:])
