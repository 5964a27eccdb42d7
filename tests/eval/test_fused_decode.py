"""The fused decode step (``ckpt_eval.fused_decode``) computes what ``model.Transformer`` computes.

On a machine without a GPU the Triton kernels run through triton's interpreter (``TRITON_INTERPRET=1``, set
here before the kernels are imported): the same kernel code, executed on CPU tensors. On a CUDA machine they
are compiled and the step is captured in a CUDA graph. Each check steps the fused kernels and the model on
the same tokens (teacher forcing, one shared KV cache) and compares the logits of every step.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported
pytest.importorskip("triton")

import dataclasses  # noqa: E402
import importlib  # noqa: E402

from ckpt_eval import decode_kernels  # noqa: E402
from ckpt_eval.backends.base import RunnerError  # noqa: E402
from ckpt_eval.distributed import init_parallel  # noqa: E402
from ckpt_eval.fused_decode import FusedDecoder, unsupported  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckpt_eval.weights import load_model  # noqa: E402
from ckptfmt import CheckpointConfig  # noqa: E402
from tests.random_checkpoint import random_checkpoint  # noqa: E402

if not CUDA:
    importlib.reload(decode_kernels)  # decorated under the interpreter even if something imported it before
DEVICE = "cuda" if CUDA else "cpu"
BASE = {
    "architecture": "LlamaForCausalLM",
    "dtype": "float32",
    "vocab_size": 300,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "hidden_act": "silu",
    "norm_epsilon": 1e-5,
    "position_embedding_type": "rope_gpt_neox",
    "max_position_embeddings": 256,
    "rotary_base": 10000.0,
}
VARIANTS = {
    "llama-gqa": {},
    "mha": {"num_key_value_heads": 4},
    "mqa-gelu-tanh": {"num_key_value_heads": 1, "hidden_act": "gelu_pytorch_tanh"},
    "interleaved-partial-rotary": {"position_embedding_type": "rope_gptj", "rotary_pct": 0.5},
    "head-size-24": {"hidden_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2},  # not a power of 2
    "biases": {"architecture": "Qwen2ForCausalLM", "qkv_bias": True},
    "all-biases": {"bias": True},
    "llama3-scaling": {
        "rotary_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64}
    },
    "float16": {"dtype": "float16"},
    "bfloat16": {"dtype": "bfloat16"},
}
MHA = {"num_key_value_heads": 4}
OPT = {**MHA, "architecture": "OPTForCausalLM", "hidden_act": "relu", "position_embedding_type": "learned_absolute"}
FALCON = {**MHA, "architecture": "FalconForCausalLM", "hidden_act": "gelu", "bias": True}
# the other architectures' features, run as batches (tests/test_executor_parity.py runs them one sequence at a time)
ARCHITECTURES = {
    "opt": OPT,
    "opt-postnorm-projected": {**OPT, "do_layer_norm_before": False, "word_embed_proj_dim": 32},
    "gpt2": {
        **MHA,
        "architecture": "GPTForCausalLM",
        "hidden_act": "gelu",
        "position_embedding_type": "learned_absolute",
    },
    "gptneox": {**MHA, "architecture": "GPTNeoXForCausalLM", "hidden_act": "gelu", "rotary_pct": 0.25},
    "falcon-shared-norm-alibi": {**FALCON, "position_embedding_type": "alibi", "parallel_attention": True},
    "falcon-new": {**FALCON, "num_key_value_heads": 2, "new_decoder_architecture": True},
    "mistral-window-4": {"architecture": "MistralForCausalLM", "sliding_window": 4},
    "gemma2": {  # a window of 4 on every other layer; test_gemma2_caps_bite makes the attention cap bite
        "architecture": "Gemma2ForCausalLM",
        "num_key_value_heads": 1,
        "head_size": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 20,
        "attn_logit_softcapping": 0.5,
        "final_logit_softcapping": 0.05,
        "sliding_window": 4,
        "_sliding_window_pattern": 2,
    },
    "gemma3": {  # q/k norms per head before the rotary; local layers (window 4) with a rotary base of their own
        "architecture": "Gemma3ForCausalLM",
        "head_size": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 16,
        "rope_local_base_freq": 100.0,
        "rotary_base": 1e6,
        "sliding_window": 4,
        "_sliding_window_pattern": 2,
    },
}
VARIANTS.update(ARCHITECTURES)
# largest |fused - model| / max |model| over the steps: float32 agrees to rounding; half precision to a few
# ulps at the logits' scale (the fused step rounds fewer intermediates: rotary and softmax stay in float32)
TOLERANCE = {"float32": 2e-5, "float16": 5e-3, "bfloat16": 3e-2}


def write(tmp_path, name: str, **extra) -> tuple:
    config = CheckpointConfig.from_dict({**BASE, **VARIANTS.get(name, {}), **extra}).check()
    path = random_checkpoint(tmp_path / name, config, seed=len(name))
    return path, config


def load(path, config):
    return load_model(path, config, init_parallel(config.mapping, DEVICE)).eval()


@torch.inference_mode()
def teacher_forced_errors(model, fused, prompt_len: int, steps: int, pad: int | list[int] = 0) -> list[float]:
    """Prefill a batch of ``prompt_len`` random tokens (row b's first ``pad[b]`` of them padding; an int: one
    row), then per step feed the same random tokens to the fused step and to the model; the relative logits
    error of each step."""
    pads = [pad] if isinstance(pad, int) else pad
    gen = torch.Generator().manual_seed(0)
    vocab, b = model.spec.vocab_size, len(pads)
    tokens = torch.randint(0, vocab, (b, prompt_len + steps), generator=gen).to(DEVICE)
    pad_t = torch.tensor(pads, device=DEVICE)
    model.setup_cache(b, prompt_len + steps)
    model(tokens[:, :prompt_len], torch.arange(prompt_len, device=DEVICE), pad_t, last_only=True)
    errors = []
    for i in range(prompt_len, prompt_len + steps):
        token, slot = tokens[:, i : i + 1], torch.tensor([i], device=DEVICE)
        ours = fused(token, slot, pad_t).clone()  # writes k, v at slot ...
        ref = model(token, slot, pad_t, last_only=True)  # ... which the model then writes again
        assert ours.shape == ref.shape == (b, 1, vocab)
        errors.append(float((ours - ref).abs().max() / ref.abs().max()))
    return errors


@pytest.mark.parametrize("name", [n for n in VARIANTS if n not in ARCHITECTURES])
def test_fused_step_matches_model(tmp_path, name):
    path, config = write(tmp_path, name)
    model = load(path, config)
    assert unsupported(model) is None
    errors = teacher_forced_errors(model, FusedDecoder(model), prompt_len=5, steps=6)
    assert max(errors) <= TOLERANCE[config.dtype], errors


def test_fused_step_long_cache_and_left_padding(tmp_path):
    """Keys spread over several key tiles; beyond 512 cached positions over several programs per head (4
    and 8 splits here) whose partials are combined, one of them wholly inside a padded prefix."""
    path, config = write(tmp_path, "llama-gqa", max_position_embeddings=2048)
    model = load(path, config)
    errors = teacher_forced_errors(model, FusedDecoder(model), prompt_len=140, steps=3, pad=9)
    errors += teacher_forced_errors(model, FusedDecoder(model), prompt_len=600, steps=2, pad=300)
    errors += teacher_forced_errors(model, FusedDecoder(model), prompt_len=1100, steps=2)
    assert max(errors) <= TOLERANCE["float32"], errors


@pytest.mark.parametrize(
    "gemm, tuning",
    [
        ("rows", {}),
        ("dot", {}),
        ("dot", {"PREFETCH": False, "BK": 32}),
        ("dot", {"SPLIT": 3, "BK": 16}),
        ("rows", {"SPLIT": 2, "BK": 16, "PREFETCH": False}),
        ("dot", {"BK": 16, "STATS_BK": 64}),
    ],
)
def test_fused_batch_with_ragged_padding(tmp_path, gemm, tuning):
    """A batch of 3 left-padded rows (pads 0, 2, 5): every GEMV reads its weight once for all rows, on tensor
    cores (dot) or as multi-row GEMVs (rows), with the next tile prefetched by hand or by triton's pipeliner
    (several tiles of K), or with K split over several programs per row tile (split-K: 3 splits of 64
    columns in tiles of 16 leave the last split empty) whose partials the last one adds, or the norm statistics
    read in wider steps than the weight tiles; rotary positions and
    the keys each row sees follow its pad."""
    path, config = write(tmp_path, "all-biases")
    model = load(path, config)
    fused = FusedDecoder(model, gemm=gemm, batch_tuning=tuning)
    errors = teacher_forced_errors(model, fused, prompt_len=7, steps=3, pad=[0, 2, 5])
    assert max(errors) <= TOLERANCE["float32"], errors
    if tuning.get("SPLIT", 1) > 1:  # every step's counts went back to zero for the next launch
        assert set(fused.split_space) == {3} and not fused.split_space[3][1].any()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fused_batch_architectures(tmp_path, name):
    """LayerNorm, learned positions (OPT's projected too), post-norm, parallel residual with one or two norms,
    ALiBi and the sliding window, each in a left-padded batch of 2 (and of 1: prefill 7 > window 4)."""
    path, config = write(tmp_path, name)
    model = load(path, config)
    assert unsupported(model) is None
    fused = FusedDecoder(model)
    errors = teacher_forced_errors(model, fused, prompt_len=7, steps=2, pad=[3, 0])
    errors += teacher_forced_errors(model, fused, prompt_len=7, steps=2, pad=1)
    assert max(errors) <= TOLERANCE["float32"], errors


def test_fused_batch_16_long_cache(tmp_path):
    """The largest batch, float16, with the cache split over several programs per head."""
    path, config = write(tmp_path, "float16", max_position_embeddings=1024)
    model = load(path, config)
    pads = [(7 * i) % 40 for i in range(16)]
    errors = teacher_forced_errors(model, FusedDecoder(model), prompt_len=520, steps=2, pad=pads)
    assert max(errors) <= TOLERANCE["float16"], errors


def test_runner_fused_greedy_tokens_equal_eager(tmp_path):
    """``compile="fused"`` through ModelRunner.generate (CUDA graphs on a GPU, one per batch size) gives the eager
    tokens, for one sequence and for a left-padded batch of two."""
    path, _ = write(tmp_path, "llama-gqa")
    prompts = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([9, 8, 7])]
    eager = ModelRunner.from_dir(path, device=DEVICE)
    fused = ModelRunner.from_dir(path, device=DEVICE, compile="fused")
    assert fused.model.decode_path == "fused"
    for batch in ([prompts[0]], [prompts[1]], prompts, [prompts[0]]):  # the last call reuses a captured step
        ref = eager.generate(batch, max_new_tokens=8)
        assert torch.equal(fused.generate(batch, max_new_tokens=8), ref)


def test_gemma2_caps_bite(tmp_path):
    """Gemma 2 with query/key weights scaled up so that scores pass the attention cap (random weights give
    scores of ~1e-3) and logits pass the final cap: the fused step computes both caps; without either in the
    reference the step would be far outside the tolerance."""
    path, config = write(tmp_path, "gemma2")
    model = load(path, config)
    with torch.no_grad():
        for layer in model.transformer.blocks():
            layer.attention.qkv.weight.mul_(40.0)
    fused = FusedDecoder(model)
    assert max(teacher_forced_errors(model, fused, prompt_len=7, steps=3, pad=[0, 2, 5])) <= TOLERANCE["float32"]
    spec, attention = model.spec, [layer.attention for layer in model.transformer.blocks()]
    for attn_cap, final_cap in ((None, spec.final_logit_softcapping), (attention[0].softcap, None)):
        for a in attention:
            a.softcap = attn_cap
        model.spec = dataclasses.replace(spec, final_logit_softcapping=final_cap)
        errors = teacher_forced_errors(model, fused, prompt_len=7, steps=3, pad=[0, 2, 5])
        assert max(errors) > 100 * TOLERANCE["float32"], (attn_cap, final_cap, errors)
    model.spec = spec


# a weight-only checkpoint of a LayerNorm model: its packed GEMVs take RMSNorm inputs only
WEIGHT_ONLY_OPT = {**OPT, "quantization": {"quant_algo": "W8A16"}}


@pytest.mark.parametrize("overrides, reason", [(WEIGHT_ONLY_OPT, "RMSNorm inputs only")])
def test_unsupported_models_name_the_reason_and_auto_falls_back(tmp_path, overrides, reason):
    config = CheckpointConfig.from_dict({**BASE, **overrides}).check()
    path = random_checkpoint(tmp_path / "m", config)
    model = load(path, config)
    assert reason in unsupported(model)
    with pytest.raises(RunnerError, match=reason):
        ModelRunner.from_dir(path, device=DEVICE, compile="fused")
    assert ModelRunner.from_dir(path, device=DEVICE, compile="auto").model.decode_path.startswith("torch.compile")


def test_gemma3_norms_and_local_base_bite(tmp_path):
    """The fused step matches Gemma 3, and the model without its q/k norms, or with the global rotary base on its
    local layers, is far from it: the step computes both (it reads what it needs when it is made)."""
    path, config = write(tmp_path, "gemma3")
    model = load(path, config)
    attention = [layer.attention for layer in model.transformer.blocks()]
    with torch.no_grad():  # norm weights of ~10: scores far from 0, so the softmax feels both changes
        for a in attention:
            a.q_layernorm.weight.mul_(10.0)
            a.k_layernorm.weight.mul_(10.0)
    fused = FusedDecoder(model)
    assert max(teacher_forced_errors(model, fused, prompt_len=7, steps=2, pad=[0, 3])) <= TOLERANCE["float32"]
    norms = [(a.q_layernorm, a.k_layernorm) for a in attention]
    for a in attention:
        a.q_layernorm = a.k_layernorm = torch.nn.Identity()
    errors = teacher_forced_errors(model, fused, prompt_len=7, steps=2, pad=[0, 3])
    for a, (q, k) in zip(attention, norms, strict=True):
        a.q_layernorm, a.k_layernorm = q, k
    assert max(errors) > 100 * TOLERANCE["float32"], errors
    local, model.rotary_local = model.rotary_local, None  # the model's local layers on the global base
    errors = teacher_forced_errors(model, fused, prompt_len=7, steps=2, pad=[0, 3])
    model.rotary_local = local
    assert max(errors) > 100 * TOLERANCE["float32"], errors


def test_batches_over_max_batch_go_to_the_fallback(tmp_path):
    """``max_batch`` bounds what the kernels take (``--compile`` "auto" sends batch 1 only, ``AUTO_MAX_BATCH``):
    a larger batch runs ``fallback``, and without one it is refused."""
    path, config = write(tmp_path, "llama-gqa")
    model = load(path, config)
    model.setup_cache(2, 8)
    calls = []

    def fallback(inputs, slots, pad, last_only=True):
        calls.append(inputs.shape[0])
        return model(inputs, slots, pad, last_only=last_only)

    step = FusedDecoder(model, fallback=fallback, cuda_graphs=False, max_batch=1)
    tokens, slot = torch.tensor([[3], [4]], device=DEVICE), torch.tensor([0], device=DEVICE)
    pad = torch.zeros(2, dtype=torch.long, device=DEVICE)
    step(tokens, slot, pad)
    assert calls == [2]
    with pytest.raises(ValueError, match="at most 1 sequences"):
        FusedDecoder(model, cuda_graphs=False, max_batch=1)(tokens, slot, pad)
    with pytest.raises(ValueError, match="max_batch"):
        FusedDecoder(model, max_batch=17)
