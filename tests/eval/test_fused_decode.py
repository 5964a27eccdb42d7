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
def teacher_forced_errors(model, fused, prompt_len: int, steps: int, pad: int = 0) -> list[float]:
    """Prefill ``prompt_len`` random tokens (the first ``pad`` of them padding), then per step feed the same
    random token to the fused step and to the model; the relative logits error of each step."""
    gen = torch.Generator().manual_seed(0)
    vocab = model.spec.vocab_size
    tokens = torch.randint(0, vocab, (1, prompt_len + steps), generator=gen).to(DEVICE)
    pad_t = torch.tensor([pad], device=DEVICE)
    model.setup_cache(1, prompt_len + steps)
    model(tokens[:, :prompt_len], torch.arange(prompt_len, device=DEVICE), pad_t, last_only=True)
    errors = []
    for i in range(prompt_len, prompt_len + steps):
        token, slot = tokens[:, i : i + 1], torch.tensor([i], device=DEVICE)
        ours = fused(token, slot, pad_t).clone()  # writes k, v at slot ...
        ref = model(token, slot, pad_t, last_only=True)  # ... which the model then writes again
        assert ours.shape == ref.shape == (1, 1, vocab)
        errors.append(float((ours - ref).abs().max() / ref.abs().max()))
    return errors


@pytest.mark.parametrize("name", list(VARIANTS))
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


def test_runner_fused_greedy_tokens_equal_eager(tmp_path):
    """``compile="fused"`` through ModelRunner.generate (CUDA graphs on a GPU) gives the eager tokens; a batch of
    two goes to the fallback path and gives them too."""
    path, _ = write(tmp_path, "llama-gqa")
    prompts = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([9, 8, 7])]
    eager = ModelRunner.from_dir(path, device=DEVICE)
    fused = ModelRunner.from_dir(path, device=DEVICE, compile="fused")
    assert fused.model.decode_path == "fused"
    for batch in ([prompts[0]], [prompts[1]], [prompts[0]]):  # the second call reuses the captured step
        ref = eager.generate(batch, max_new_tokens=8)
        assert torch.equal(fused.generate(batch, max_new_tokens=8), ref)
    if CUDA:  # the fallback is torch.compile with CUDA graphs: too slow to compile on the CPU test machine
        assert torch.equal(fused.generate(prompts, max_new_tokens=8), eager.generate(prompts, max_new_tokens=8))


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"architecture": "OPTForCausalLM", "hidden_act": "relu", "position_embedding_type": "learned_absolute",
          "num_key_value_heads": 4}, "layernorm"),
        ({"architecture": "FalconForCausalLM", "position_embedding_type": "alibi", "num_key_value_heads": 4,
          "hidden_act": "gelu"}, "alibi"),
        ({"architecture": "MistralForCausalLM", "sliding_window": 8}, "sliding_window"),
    ],
)  # fmt: skip
def test_unsupported_models_name_the_reason_and_auto_falls_back(tmp_path, overrides, reason):
    config = CheckpointConfig.from_dict({**BASE, **overrides}).check()
    path = random_checkpoint(tmp_path / "m", config)
    model = load(path, config)
    assert reason in unsupported(model)
    with pytest.raises(RunnerError, match=reason):
        ModelRunner.from_dir(path, device=DEVICE, compile="fused")
    assert ModelRunner.from_dir(path, device=DEVICE, compile="auto").model.decode_path.startswith("torch.compile")
