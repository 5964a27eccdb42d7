"""The native FP8 / int8 GEMMs of ``ckpt_eval.native_quant`` against the emulation (CUDA only: skipped here).

The same random FP8 (sm89+) and INT8 SmoothQuant checkpoints load twice, natively and with
``CKPT_EVAL_NATIVE_QUANT=0``; prefill logits agree within float16 rounding of a few layers (the emulation rounds
the dequantized weights and inputs to float16, the native GEMMs their float32 sums).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from ckpt_eval import native_quant  # noqa: E402
from ckpt_eval.distributed import init_parallel  # noqa: E402
from ckpt_eval.fp8_quantize import quantize_fp8  # noqa: E402
from ckpt_eval.weights import load_model  # noqa: E402
from ckptfmt import CheckpointConfig, load_config  # noqa: E402
from tests.random_checkpoint import random_checkpoint  # noqa: E402

CONFIG = {
    "architecture": "LlamaForCausalLM",
    "dtype": "float16",
    "vocab_size": 320,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "hidden_act": "silu",
    "position_embedding_type": "rope_gpt_neox",
    "max_position_embeddings": 128,
}
TOL = 2e-2  # max |native - emulated| / max |emulated| over the prompt's logits, float16


def logits(path, monkeypatch, native: bool) -> tuple[torch.Tensor, int]:
    monkeypatch.setenv("CKPT_EVAL_NATIVE_QUANT", "1" if native else "0")
    config = load_config(path)
    model = load_model(path, config, init_parallel(config.mapping, "cuda"))
    count = sum(isinstance(m, native_quant.NativeLinear) for m in model.modules())
    tokens = torch.arange(5, 45, device="cuda").view(1, -1)
    model.setup_cache(1, tokens.shape[1])
    with torch.inference_mode():
        pad = torch.zeros(1, dtype=torch.long, device="cuda")
        out = model(tokens, torch.arange(tokens.shape[1], device="cuda"), pad)
    return out.float(), count


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_fp8_scaled_mm_matches_emulation(tmp_path, monkeypatch):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 GEMMs need sm89+")
    config = CheckpointConfig.from_dict(CONFIG).check()
    src = random_checkpoint(tmp_path / "f16", config)
    path = tmp_path / "fp8"
    quantize_fp8(src, path, torch.arange(3, 40).view(1, -1), "cuda")
    assert native_quant.probe("fp8", "cuda:0", torch.float16) is None
    got, count = logits(path, monkeypatch, native=True)
    want, none = logits(path, monkeypatch, native=False)
    assert count == 2 * 5 and none == 0  # qkv, dense, fc, gate, proj per layer
    assert rel_err(got, want) <= TOL


def test_int8_int_mm_matches_emulation(tmp_path, monkeypatch):
    for algo in ("W8A8_SQ_PER_CHANNEL", "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"):
        config = CheckpointConfig.from_dict({**CONFIG, "quantization": {"quant_algo": algo}}).check()
        path = tmp_path / algo
        random_checkpoint(path, config)
        assert native_quant.probe("int8", "cuda:0", torch.float16) is None
        got, count = logits(path, monkeypatch, native=True)
        want, none = logits(path, monkeypatch, native=False)
        assert count == 2 * 5 and none == 0
        assert rel_err(got, want) <= TOL, algo
