"""The torch backend computes the same function as transformers, for every tiny architecture variant.

fp32: logits within 1e-4 relative error (max |ours - ref| / max |ref|) and identical greedy tokens for 32 steps.
fp16 / bf16: logits within FP16_TOL / BF16_TOL (a couple of ulps at the logits' scale; greedy tokens of
random tiny models may then part at near-ties, so they are not compared).
Our prompts run batched and left padded; the reference runs each prompt alone, unpadded.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckptfmt.quant import dequantize_weight_only, quantize_weight_only  # noqa: E402
from tests.tiny_models import TINY_CONFIGS, convert_tiny, make_tiny_hf  # noqa: E402

# more variants: name -> (tiny_models variant, transformers config overrides)
EXTRA_VARIANTS = {
    "falcon-alibi": ("falcon-old", dict(alibi=True, multi_query=False, parallel_attn=False, bias=True)),  # RW-1B
    "llama-head-dim-32": ("llama-gqa", dict(head_dim=32)),  # head_size != hidden / heads
    "llama-biases": ("llama-gqa", dict(attention_bias=True, mlp_bias=True)),
    "mistral-window-8": ("mistral", dict(sliding_window=8)),  # prompts + 32 tokens run far past the window
    "falcon-alibi-6heads": (  # 6 heads: ALiBi slopes beyond a power of two
        "falcon-old",
        dict(alibi=True, multi_query=False, parallel_attn=True, num_attention_heads=6, hidden_size=96),
    ),
}
VARIANTS = [*TINY_CONFIGS, *EXTRA_VARIANTS]
FP32_TOL, FP16_TOL, BF16_TOL = 1e-4, 5e-3, 3e-2
STEPS = 32
PROMPT_LENGTHS = (7, 3, 11)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


def prompts(vocab: int = 250, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen) for n in PROMPT_LENGTHS]


class Models:
    """Tiny HF models and their conversions, made once per test module under one temp dir."""

    def __init__(self, root):
        self.root = root

    def hf_dir(self, name: str):
        path = self.root / f"hf-{name}"
        if not (path / "config.json").exists():
            base, overrides = EXTRA_VARIANTS.get(name, (name, {}))
            make_tiny_hf(base, path, **overrides)
        return path

    def hf(self, name: str, dtype: str = "float32"):
        model = transformers.AutoModelForCausalLM.from_pretrained(self.hf_dir(name), dtype=getattr(torch, dtype))
        model.generation_config.eos_token_id = None  # generate exactly STEPS tokens, like ours without end_id
        model.generation_config.pad_token_id = 0
        return model.eval()

    def checkpoint(self, name: str, tp: int = 1, pp: int = 1, dtype: str = "float32", **flags):
        tag = "-".join(f"{k}{v}" for k, v in sorted(flags.items()))
        out = self.root / f"ckpt-{name}-tp{tp}pp{pp}-{dtype}-{tag}"
        if not (out / "config.json").exists():
            convert_tiny(name, out, tp=tp, pp=pp, dtype=dtype, hf_dir=self.hf_dir(name), **flags)
        return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("eval-models"))


def run_ours(runner: ModelRunner, batch: list[torch.Tensor]) -> dict:
    return runner.generate(
        batch, max_new_tokens=STEPS, return_dict=True, output_context_logits=True, output_generation_logits=True
    )


@torch.inference_mode()
def reference(hf, batch: list[torch.Tensor]) -> list[dict]:
    """Per prompt: HF prompt logits and HF greedy continuation (prompt + STEPS tokens)."""
    out = []
    for p in batch:
        tokens = hf.generate(p[None], max_new_tokens=STEPS, do_sample=False)[0]
        out.append(
            {"context_logits": hf(p[None]).logits[0], "tokens": tokens, "sequence_logits": hf(tokens[None]).logits[0]}
        )
    return out


def assert_matches_reference(ours: dict, refs: list[dict], batch: list[torch.Tensor], tol: float) -> None:
    for i, (p, ref) in enumerate(zip(batch, refs)):
        n = len(p)
        assert rel_err(ours["context_logits"][i, :n], ref["context_logits"]) <= tol, f"prompt {i} logits"
        assert ours["output_ids"][i, 0, : n + STEPS].tolist() == ref["tokens"].tolist(), f"prompt {i} tokens"
        assert int(ours["sequence_lengths"][i, 0]) == n + STEPS
        # logits of every generated position, against HF on the whole greedy sequence (no cache)
        gen = ours["generation_logits"][i, 0]
        assert rel_err(gen, ref["sequence_logits"][n - 1 : n - 1 + STEPS]) <= tol, f"prompt {i} generation logits"


@pytest.mark.parametrize("name", VARIANTS)
def test_fp32_parity_with_transformers(models, name):
    batch = prompts()
    ours = run_ours(ModelRunner.from_dir(models.checkpoint(name), device="cpu"), batch)
    assert_matches_reference(ours, reference(models.hf(name), batch), batch, FP32_TOL)


@pytest.mark.parametrize("name", VARIANTS)
def test_fp32_parity_without_padding(models, name):
    """Prompts of one length: the prefill is plain causal with no rows to shift (``Transformer.causal_prefill``)."""
    gen = torch.Generator().manual_seed(5)
    batch = [torch.randint(1, 250, (6,), generator=gen) for _ in range(3)]  # 0 is the reference's pad id
    ours = run_ours(ModelRunner.from_dir(models.checkpoint(name), device="cpu"), batch)
    assert_matches_reference(ours, reference(models.hf(name), batch), batch, FP32_TOL)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize(("dtype", "tol"), [("float16", FP16_TOL), ("bfloat16", BF16_TOL)])
def test_half_precision_logits_within_tolerance(models, name, dtype, tol):
    batch = prompts()
    runner = ModelRunner.from_dir(models.checkpoint(name, dtype=dtype), device="cpu")
    ours = runner.generate(batch, max_new_tokens=1, return_dict=True, output_context_logits=True)
    hf = models.hf(name, dtype)
    for i, p in enumerate(batch):
        with torch.inference_mode():
            ref = hf(p[None]).logits[0]
        assert rel_err(ours["context_logits"][i, : len(p)], ref) <= tol


def dequantized_hf(hf, precision: str, group_size: int | None):
    """The HF model with every decoder-layer Linear replaced by its quantize -> dequantize round trip."""
    for name, module in hf.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            q, scale = quantize_weight_only(module.weight.detach().numpy(), precision, group_size)
            w = dequantize_weight_only(q, scale, precision, group_size)
            module.weight.data = torch.from_numpy(np.ascontiguousarray(w))
    return hf


@pytest.mark.parametrize(("precision", "group_size"), [("int8", None), ("int4", None), ("int8", 32), ("int4", 32)])
def test_weight_only_matches_dequantized_reference(models, precision, group_size):
    flags = {"use_weight_only": True, "weight_only_precision": precision}
    if group_size:
        flags.update(per_group=True, group_size=group_size)
    batch = prompts()
    runner = ModelRunner.from_dir(models.checkpoint("llama-gqa", **flags), device="cpu")
    ours = run_ours(runner, batch)
    ref = reference(dequantized_hf(models.hf("llama-gqa"), precision, group_size), batch)
    assert_matches_reference(ours, ref, batch, FP32_TOL)
    # the model holds the codes, not a float copy: no floating tensor of a decoder layer has a linear's size
    names = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
    for linear in (b.get_submodule(n) for b in runner.model.model.transformer.blocks() for n in names):
        held = [*linear.parameters(), *linear.buffers()]
        codes = [t.nbytes for t in held if t.dtype == torch.int8]
        floats = sum(t.nbytes for t in held if t.is_floating_point())  # scales (group 32: 1/8 byte a weight)
        assert len(codes) == 1 and floats < codes[0] / 2, linear


@pytest.mark.parametrize("name", VARIANTS)
def test_hf_backend_agrees_with_torch_backend(models, name):
    """The hf backend (transformers stepped by our loop, left padding by mask and position ids) as a reference."""
    batch = prompts()
    kwargs = dict(max_new_tokens=16, return_dict=True, output_context_logits=True)
    ours = ModelRunner.from_dir(models.checkpoint(name), device="cpu").generate(batch, **kwargs)
    hf = ModelRunner.from_dir(models.hf_dir(name), backend="hf", device="cpu").generate(batch, **kwargs)
    assert torch.equal(ours["output_ids"], hf["output_ids"])
    assert rel_err(ours["context_logits"], hf["context_logits"]) <= FP32_TOL
