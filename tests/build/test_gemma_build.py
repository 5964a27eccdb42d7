"""Gemma 1/2/3 through ckpt-build: the builder's graph executed on torch against transformers, and real plans.

The tiny models of tests/eval/test_gemma.py (MQA/GQA, head_dim 24 != 64 / 4, window 6, caps 5 and 3,
query_pre_attn_scalar 20, Gemma 3's local:global pattern with its own rotary bases) converted by ckpt-convert hf.
fp32: every one of 32 greedy steps' logits within 1e-4 relative error of transformers on the whole sequence,
and the same 32 tokens, at tp/pp (1,1), (2,1), (1,2): the window (6) is far shorter than 8 + 32 positions and
Gemma 3's global layer (the third of 3) lies on the second pipeline stage.
"""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from conftest import run_cli  # noqa: E402
from test_build_trt import assert_plans_name_their_io  # noqa: E402

from ckpt_build.execute import TorchRanks  # noqa: E402
from ckpt_build.limits import Limits  # noqa: E402
from ckptfmt.engine import check_engine_dir  # noqa: E402
from tests.eval.test_gemma import GEMMAS, make_gemma_hf  # noqa: E402
from tests.tiny_models import convert_tiny  # noqa: E402

LIMITS = Limits(max_batch_size=3, max_input_len=16, max_output_len=48)
PROMPT = [5, 17, 99, 3, 42, 7, 200, 11]
STEPS = 32
FP32_TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


class Gemmas:
    """HF models, their greedy references and conversions, made once per module."""

    def __init__(self, root):
        self.root = root
        self.refs: dict[str, tuple[list[int], torch.Tensor]] = {}

    def hf_dir(self, name: str):
        return make_gemma_hf(name, self.root / f"hf-{name}")

    def hf(self, name: str):
        return transformers.AutoModelForCausalLM.from_pretrained(self.hf_dir(name), dtype=torch.float32).eval()

    @torch.no_grad()
    def reference(self, name: str) -> tuple[list[int], torch.Tensor]:
        """transformers' 32 greedy tokens after PROMPT and its logits of every position of that sequence."""
        if name not in self.refs:
            model = self.hf(name)
            out = model.generate(
                torch.tensor([PROMPT]),
                max_new_tokens=STEPS,
                min_new_tokens=STEPS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            self.refs[name] = (out[0, len(PROMPT) :].tolist(), model(out).logits[0])
        return self.refs[name]

    def checkpoint(self, name: str, tp: int = 1, pp: int = 1, dtype: str = "float32"):
        out = self.root / f"ckpt-{name}-tp{tp}pp{pp}-{dtype}"
        if not (out / "config.json").exists():
            convert_tiny(name, out, tp=tp, pp=pp, dtype=dtype, hf_dir=self.hf_dir(name))
        return out


@pytest.fixture(scope="module")
def gemmas(tmp_path_factory):
    return Gemmas(tmp_path_factory.mktemp("gemma-build"))


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("name", GEMMAS)
def test_graph_matches_transformers(gemmas, name, tp, pp):
    ref_tokens, ref_logits = gemmas.reference(name)
    ranks = TorchRanks(gemmas.checkpoint(name, tp, pp), LIMITS)
    tokens, logits = ranks.greedy(PROMPT, STEPS)
    assert tokens == ref_tokens
    n = len(PROMPT)
    for step, got in enumerate(logits):
        assert rel_err(got[0], ref_logits[n - 1 + step]) <= FP32_TOL, f"step {step}"


@pytest.mark.parametrize("name", GEMMAS)
def test_right_padded_batch_matches_single_prompts(gemmas, name):
    """Rows of unequal lengths in one step, then one decode step with each row at its own position: the
    window mask follows each row's positions."""
    model = gemmas.hf(name)
    ranks = TorchRanks(gemmas.checkpoint(name), LIMITS)
    prompts = [PROMPT + [9, 8, 7, 6, 5], PROMPT[:3], PROMPT[1:8]]
    width = max(map(len, prompts))
    ranks.reset(len(prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    logits = ranks.step(ids, torch.arange(width).repeat(len(prompts), 1), torch.tensor([len(p) - 1 for p in prompts]))
    nxt = [int(t) for t in logits.argmax(-1)]
    with torch.no_grad():
        for b, p in enumerate(prompts):
            assert rel_err(logits[b], model(torch.tensor([p])).logits[0, -1]) <= FP32_TOL, f"row {b}"
        step = ranks.step(
            torch.tensor([[t] for t in nxt]),
            torch.tensor([[len(p)] for p in prompts]),
            torch.zeros(3, dtype=torch.int32),
        )
        for b, p in enumerate(prompts):
            assert rel_err(step[b], model(torch.tensor([p + [nxt[b]]])).logits[0, -1]) <= FP32_TOL, f"row {b}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_graph_stays_close(gemmas, dtype):
    """Gemma 2's capped attention (casts around fp32 scores) and capped logits, strongly typed in half precision."""
    _, ref_logits = gemmas.reference("gemma2")
    tokens, logits = TorchRanks(gemmas.checkpoint("gemma2", dtype=dtype), LIMITS).greedy(PROMPT, 2)
    assert logits[0].dtype == torch.float32  # logits_dtype
    assert rel_err(logits[0][0], ref_logits[len(PROMPT) - 1]) <= 0.03


def test_caps_and_window_change_the_numbers(gemmas, tmp_path):
    """Each of Gemma 2's cap and window fields moves the graph's logits by several times the parity tolerance, so
    the parity tests above would see it ignored (the attention cap of 5 bites least: ~6e-4)."""
    base = gemmas.checkpoint("gemma2")
    _, logits = TorchRanks(base, LIMITS).greedy(PROMPT, 1)
    for field, value in (("attn_logit_softcapping", None), ("final_logit_softcapping", None), ("sliding_window", 64)):
        other = tmp_path / field
        shutil.copytree(base, other)
        config = json.loads((other / "config.json").read_text())
        (other / "config.json").write_text(json.dumps({**config, field: value}))
        _, changed = TorchRanks(other, LIMITS).greedy(PROMPT, 1)
        assert rel_err(changed[0], logits[0]) > 5 * FP32_TOL, field


@pytest.mark.trt
@pytest.mark.parametrize(
    ("name", "dtype", "tp", "pp"),
    [
        ("gemma2", "float16", 1, 1),
        ("gemma2", "bfloat16", 2, 1),
        ("gemma3", "float16", 1, 2),
        ("gemma", "float16", 1, 1),
    ],
)
def test_real_engine_builds(gemmas, tmp_path, name, dtype, tp, pp):
    """TensorRT-RTX builds the plans; each names every input and output of its stage in the engine config,
    whose caches have Gemma's head_size and whose pretrained_config keeps the Gemma fields."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    ckpt, out = gemmas.checkpoint(name, tp, pp, dtype), tmp_path / "engine"
    limits = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "16", "--target", "sm86"]
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", out, *limits)
    assert rc == 0, err
    assert_plans_name_their_io(out)
    engine = check_engine_dir(out)
    assert engine.world_size == tp * pp and engine.io.kv_cache.head_size == 24
    written = json.loads((ckpt / "config.json").read_text())
    for field in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "sliding_window"):
        assert engine.pretrained_config.get(field) == written.get(field), field
    layers = [layer for stage in engine.io.stages for layer in stage.layers]
    assert layers == list(range(GEMMAS[name][1]["num_hidden_layers"]))


@pytest.mark.trt
@pytest.mark.parametrize(("batch", "inp", "out"), [(1, 1, 1), (1, 16, 8), (2, 2, 1)])
def test_small_limits_build(gemmas, tmp_path, batch, inp, out):
    """Batch 1 with few tokens (where TensorRT-RTX's compiler once failed on shared masks) builds Gemma 2."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    limits = ["--max_batch_size", batch, "--max_input_len", inp, "--max_output_len", out, "--target", "sm89"]
    ckpt = gemmas.checkpoint("gemma2", dtype="float16")
    rc, _, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "e", *limits)
    assert rc == 0, err
