"""Every architecture: the builder's graph on torch, fed by the HF converter's checkpoints, vs transformers."""

from __future__ import annotations

import pytest
import torch

from ckpt_build.execute import TorchRanks
from ckpt_build.limits import Limits
from tests.tiny_models import TINY_CONFIGS, convert_tiny, make_tiny_hf

LIMITS = Limits(max_batch_size=2, max_input_len=16, max_output_len=48)
PROMPT = [5, 17, 99, 3, 42, 7, 200, 11]
STEPS = 32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """name -> (HF dir, last-token logits of PROMPT, greedy tokens) for every tiny variant."""
    import transformers

    root = tmp_path_factory.mktemp("hf-archs")
    cache = {}

    def get(name: str):
        if name not in cache:
            path = make_tiny_hf(name, root / name)
            model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
            with torch.no_grad():
                logits = model(torch.tensor([PROMPT])).logits[0, -1]
            out = model.generate(
                torch.tensor([PROMPT]),
                max_new_tokens=STEPS,
                min_new_tokens=STEPS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            cache[name] = (path, logits, out[0, len(PROMPT) :].tolist())
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_matches_transformers(tmp_path, hf_models, name):
    hf_dir, ref_logits, ref_tokens = hf_models(name)
    ranks = TorchRanks(convert_tiny(name, tmp_path / "ckpt", hf_dir=hf_dir), LIMITS)
    tokens, logits = ranks.greedy(PROMPT, STEPS)
    assert rel_err(logits[0][0], ref_logits) <= 1e-4
    assert tokens == ref_tokens


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tp2_matches_tp1(tmp_path, hf_models, name):
    hf_dir, _, _ = hf_models(name)
    one = TorchRanks(convert_tiny(name, tmp_path / "tp1", hf_dir=hf_dir), LIMITS)
    two = TorchRanks(convert_tiny(name, tmp_path / "tp2", tp=2, hf_dir=hf_dir), LIMITS)
    tokens_one, logits_one = one.greedy(PROMPT, 8)
    tokens_two, logits_two = two.greedy(PROMPT, 8)
    assert tokens_two == tokens_one
    for a, b in zip(logits_two, logits_one):
        assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize(
    "name,tp,pp,flags",
    [
        ("gpt2", 2, 1, {"use_parallel_embedding": True}),  # vocab-split embedding and positions: all-reduce lookup
        ("llama-tied", 2, 1, {"use_parallel_embedding": True}),
        ("opt-postnorm-proj", 1, 2, {}),
        ("falcon-new", 2, 2, {}),
        ("gpt2", 2, 1, {"use_parallel_embedding": True, "embedding_sharding_dim": 1}),  # width-split: all-gather
        ("llama-tied", 1, 1, {"use_embedding_sharing": True}),  # no lm_head: the embedding is the head
        ("llama-tied", 2, 1, {"use_parallel_embedding": True, "use_embedding_sharing": True}),
    ],
)
def test_converter_parallel_layouts(tmp_path, hf_models, name, tp, pp, flags):
    hf_dir, ref_logits, ref_tokens = hf_models(name)
    ranks = TorchRanks(convert_tiny(name, tmp_path / "ckpt", tp=tp, pp=pp, hf_dir=hf_dir, **flags), LIMITS)
    tokens, logits = ranks.greedy(PROMPT, 8)
    assert rel_err(logits[0][0], ref_logits) <= 1e-4
    assert tokens == ref_tokens[:8]


def dequantized_reference(hf_dir, precision: str, group_size: int | None):
    """transformers with every decoder-layer nn.Linear weight replaced by its weight-only round trip."""
    import numpy as np
    import transformers

    from ckptfmt.quant import dequantize_weight_only, quantize_weight_only

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name not in ("lm_head", "embed_out"):
                q, s = quantize_weight_only(module.weight.numpy(), precision, group_size)
                back = dequantize_weight_only(q, s, precision, group_size)
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(back)))
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0, -1]


@pytest.mark.parametrize(
    "name,tp,precision,group", [("gptneox", 2, "int8", None), ("qwen2", 1, "int4", 32), ("falcon-old", 1, "int4", None)]
)
def test_converter_weight_only(tmp_path, hf_models, name, tp, precision, group):
    """Weight-only checkpoints from the converter compute transformers on the dequantized weights."""
    hf_dir, ref_logits, _ = hf_models(name)
    flags = {"use_weight_only": True, "weight_only_precision": precision}
    if group:
        flags.update(per_group=True, group_size=group)
    ranks = TorchRanks(convert_tiny(name, tmp_path / "ckpt", tp=tp, hf_dir=hf_dir, **flags), LIMITS)
    _, logits = ranks.greedy(PROMPT, 1)
    assert rel_err(logits[0][0], dequantized_reference(hf_dir, precision, group)) <= 1e-4
    assert rel_err(logits[0][0], ref_logits) > 1e-3  # the weights really were quantized


def test_alibi_matches_transformers_at_tp1_and_tp2(tmp_path):
    """Falcon with ALiBi (the slope x key bias added to the scores): the graph's logits and greedy tokens are
    transformers' at tp 1, and at tp 2, where each rank holds its own heads' slopes."""
    import transformers

    from tests.tiny_models import make_tiny_hf

    hf = make_tiny_hf("falcon-old", tmp_path / "hf", alibi=True, multi_query=False, parallel_attn=False, bias=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    with torch.no_grad():
        ref_logits = model(torch.tensor([PROMPT])).logits[0, -1]
        out = model.generate(
            torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    for tp in (1, 2):
        tokens, logits = TorchRanks(convert_tiny("falcon-old", tmp_path / f"tp{tp}", tp=tp, hf_dir=hf), LIMITS).greedy(
            PROMPT, 8
        )
        assert rel_err(logits[0][0], ref_logits) <= 1e-4, tp
        assert tokens == out[0, len(PROMPT) :].tolist(), tp
