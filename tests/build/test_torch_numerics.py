"""The builder's network executed on torch (the exact graph the engines get) against transformers on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_llama import llama_checkpoint

from ckpt_build.execute import TorchRanks
from ckpt_build.limits import Limits
from ckptfmt.quant import dequantize_weight_only, quantize_weight_only

LIMITS = Limits(max_batch_size=4, max_input_len=16, max_output_len=48)
PROMPT = [5, 17, 99, 3, 42, 7, 200, 11]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def hf_last_logits(model, prompt) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0, -1]


def hf_greedy(model, prompt, steps: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def hf_reference(tiny_llama):
    model, _ = tiny_llama
    return hf_last_logits(model, PROMPT), hf_greedy(model, PROMPT, 32)


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_llama_matches_transformers(tmp_path, tiny_llama, hf_reference, tp, pp):
    model, _ = tiny_llama
    ref_logits, ref_tokens = hf_reference
    ranks = TorchRanks(llama_checkpoint(model, tmp_path / "ckpt", tp=tp, pp=pp), LIMITS)
    tokens, logits = ranks.greedy(PROMPT, 32)
    assert rel_err(logits[0][0], ref_logits) <= 1e-4
    assert tokens == ref_tokens


def test_tp2_ranks_agree_with_tp1(tmp_path, tiny_llama):
    model, _ = tiny_llama
    one = TorchRanks(llama_checkpoint(model, tmp_path / "tp1"), LIMITS)
    two = TorchRanks(llama_checkpoint(model, tmp_path / "tp2", tp=2, parallel_embedding=True), LIMITS)
    ids, pos, last = torch.tensor([PROMPT]), torch.arange(len(PROMPT))[None], torch.tensor([len(PROMPT) - 1])
    one.reset(1)
    two.reset(1)
    a = one.step(ids, pos, last)
    b0, b1 = two.step(ids, pos, last, all_ranks=True)
    assert torch.equal(b0, b1)  # every rank returns the full gathered logits
    assert rel_err(b0, a) <= 1e-5


def test_batched_unequal_prompts_match_single_runs(tmp_path, tiny_llama):
    """Right-padded batch: the mask built from position_ids hides padding and the other rows' lengths."""
    model, _ = tiny_llama
    ranks = TorchRanks(llama_checkpoint(model, tmp_path / "ckpt"), LIMITS)
    prompts = [PROMPT, PROMPT[:3], PROMPT[2:7]]
    width = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    pos = torch.arange(width).repeat(len(prompts), 1)
    ranks.reset(len(prompts))
    logits = ranks.step(ids, pos, torch.tensor([len(p) - 1 for p in prompts]))
    nxt = logits.argmax(-1)
    for b, p in enumerate(prompts):
        assert rel_err(logits[b], hf_last_logits(model, p)) <= 1e-4
    # one decode step for the whole batch, each row at its own position
    logits = ranks.step(nxt[:, None], torch.tensor([[len(p)] for p in prompts]), torch.zeros(3, dtype=torch.int32))
    for b, p in enumerate(prompts):
        assert rel_err(logits[b], hf_last_logits(model, p + [int(nxt[b])])) <= 1e-4


@pytest.mark.parametrize("quant,group", [("int8", None), ("int4", None), ("int4", 32)])
def test_weight_only_matches_dequantized_transformers(tmp_path, tiny_llama, quant, group):
    """Engine dequantize semantics: logits equal transformers run on the dequantized weights."""
    model, path = tiny_llama
    import transformers

    ref = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 2 and "embed" not in name and "lm_head" not in name:
                q, s = quantize_weight_only(p.numpy(), quant, group)
                p.copy_(torch.from_numpy(np.ascontiguousarray(dequantize_weight_only(q, s, quant, group))))
    ranks = TorchRanks(llama_checkpoint(model, tmp_path / "ckpt", tp=2, quant=quant, group_size=group), LIMITS)
    ranks.reset(1)
    got = ranks.step(torch.tensor([PROMPT]), torch.arange(len(PROMPT))[None], torch.tensor([len(PROMPT) - 1]))
    assert rel_err(got[0], hf_last_logits(ref, PROMPT)) <= 1e-4
    assert rel_err(got[0], hf_last_logits(model, PROMPT)) > 1e-4  # the quantization really happened


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_graph_runs_and_stays_close(tmp_path, tiny_llama, hf_reference, dtype):
    """The fp16/bf16 graph (strongly typed, like the engine) runs and stays near the fp32 reference."""
    model, _ = tiny_llama
    ranks = TorchRanks(llama_checkpoint(model, tmp_path / "ckpt", dtype=dtype), LIMITS)
    tokens, logits = ranks.greedy(PROMPT, 4)
    assert logits[0].dtype == torch.float32  # logits_dtype
    assert rel_err(logits[0][0], hf_reference[0]) <= 0.05


def test_all_token_logits(tmp_path, tiny_llama):
    """--gather_all_token_logits: [batch, seq, vocab] logits of every token, equal to transformers'."""
    model, _ = tiny_llama
    limits = Limits(max_batch_size=1, max_input_len=16, max_output_len=16, gather_all_token_logits=True)
    ranks = TorchRanks(llama_checkpoint(model, tmp_path / "ckpt", tp=2), limits)
    assert "last_token_index" not in [t.name for t in ranks.stages[0].inputs]
    ranks.reset(1)
    got = ranks.step(torch.tensor([PROMPT]), torch.arange(len(PROMPT))[None])
    with torch.no_grad():
        ref = model(torch.tensor([PROMPT])).logits
    assert got.shape == ref.shape == (1, len(PROMPT), 250)
    assert rel_err(got, ref) <= 1e-4


def test_fc_and_gate_as_one_matrix_or_two_compute_the_same(tmp_path, tiny_llama):
    """Stored back to back (our writers' order), fc and gate are one view and one GEMM; stored apart (any
    other writer's order), two GEMMs. Both graphs compute the same logits and tokens."""
    from ckptfmt import RankFileReader, load_config, save_checkpoint

    model, _ = tiny_llama
    together = llama_checkpoint(model, tmp_path / "together")
    names = ["transformer.layers.0.mlp.fc.weight", "transformer.layers.0.mlp.gate.weight"]
    with RankFileReader(together / "rank0.safetensors") as reader:
        assert reader.stacked(names) is not None
        tensors = {n: np.array(reader[n]) for n in reversed(reader.keys())}  # proj now sits between gate and fc
    apart = tmp_path / "apart"
    save_checkpoint(apart, load_config(together), {0: tensors})
    with RankFileReader(apart / "rank0.safetensors") as reader:
        assert reader.stacked(names) is None
    one, two = TorchRanks(together, LIMITS), TorchRanks(apart, LIMITS)
    tokens_one, logits_one = one.greedy(PROMPT, 16)
    tokens_two, logits_two = two.greedy(PROMPT, 16)
    assert tokens_one == tokens_two
    assert rel_err(logits_one[0][0], logits_two[0][0]) <= 1e-6
