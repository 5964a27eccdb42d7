"""The fused decode step on weight-only int8 / int4 and INT4 AWQ checkpoints: its GEMVs read the packed codes
(``decode_wq_kernels``), and it computes what the torch backend computes from the dequantized weights
(triton's interpreter on CPU, compiled on a GPU).

Random checkpoints of every layout (``tests.random_checkpoint``: random codes and scales). Tolerances as
test_fused_decode_quantized.py: float32 2e-5 (the fused GEMV scales each row's or group's products, the torch
backend each weight); float16 5e-3 (the torch backend also rounds each dequantized weight to float16).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported
pytest.importorskip("triton")

import importlib  # noqa: E402

from ckpt_eval import decode_kernels, decode_wq_kernels  # noqa: E402
from ckpt_eval.fused_decode import FusedDecoder, unsupported  # noqa: E402
from ckpt_eval.quantized import PackedWeight  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckpt_eval.wq_quantize import quantize_wq  # noqa: E402
from ckptfmt import CheckpointConfig  # noqa: E402
from ckptfmt.quant import dequantize_linear, dequantize_weight_only, quantize_weight_only  # noqa: E402
from tests.eval.test_fused_decode import BASE, DEVICE, load, teacher_forced_errors  # noqa: E402
from tests.eval.test_packed_linear import every_byte  # noqa: E402
from tests.random_checkpoint import random_checkpoint  # noqa: E402

if not CUDA:
    importlib.reload(decode_kernels)
    importlib.reload(decode_wq_kernels)
TOLERANCE = {"float32": 2e-5, "float16": 5e-3}
# variant -> quantization (config.json) and model overrides
QUANT = {
    "int8": ({"quant_algo": "W8A16"}, {}),
    "int4": ({"quant_algo": "W4A16"}, {}),
    "int4-group32": ({"quant_algo": "W4A16_GPTQ", "group_size": 32}, {}),
    "int8-group32-biases": ({"quant_algo": "W8A16_GPTQ", "group_size": 32}, {"bias": True}),
    "int4-awq": ({"quant_algo": "W4A16_AWQ", "group_size": 32, "pre_quant_scale": True}, {}),
    "int4-awq-plain-mlp": (
        {"quant_algo": "W4A16_AWQ", "group_size": 32, "pre_quant_scale": True},
        {"hidden_act": "gelu_pytorch_tanh"},
    ),
}


def quantized_checkpoint(tmp_path, name: str, dtype: str = "float32"):
    quant, overrides = QUANT[name]
    config = CheckpointConfig.from_dict({**BASE, **overrides, "dtype": dtype, "quantization": quant}).check()
    return random_checkpoint(tmp_path / f"{name}-{dtype}", config, seed=len(name)), config


@pytest.mark.parametrize("name", list(QUANT))
def test_fused_step_reads_codes_and_matches_torch_backend(tmp_path, name):
    path, config = quantized_checkpoint(tmp_path, name)
    model = load(path, config)
    packed = model.transformer.blocks()[0].mlp.fc.packed_weight
    assert packed.codes.dtype == torch.int8 and packed.bits == (8 if "int8" in name else 4)
    assert unsupported(model) is None
    errors = teacher_forced_errors(model, FusedDecoder(model), prompt_len=5, steps=4)
    assert max(errors) <= TOLERANCE["float32"], errors


@pytest.mark.parametrize("name", ["int8", "int4-group32", "int8-group32-biases", "int4-awq-plain-mlp"])
def test_fused_batch_reads_codes_once_and_matches_torch_backend(tmp_path, name):
    """A batch of 3 left-padded rows: ``packed_gemv_batch_kernel`` multiplies each weight's codes by every row
    (one launch per linear) and the step computes what the torch backend computes."""
    path, config = quantized_checkpoint(tmp_path, name)
    model = load(path, config)
    errors = teacher_forced_errors(model, FusedDecoder(model), prompt_len=7, steps=3, pad=[0, 2, 5])
    assert max(errors) <= TOLERANCE["float32"], errors


@pytest.mark.parametrize("bits, group", [(8, None), (4, 16), (4, 24)])
def test_batch_gemv_equals_one_row_gemv(bits, group):
    """Each row of the batch kernel's product is the one-vector kernel's product of that row, to float32
    rounding, for codes that take every byte value, with RMSNorm, for batches of 2 and 5 (padded to 8)."""
    k, n = 48, 64
    stored = every_byte(k, n // (8 // bits))
    rng = np.random.default_rng(bits)
    scale = torch.from_numpy((rng.random((n, k // group if group else 1)) + 0.5).astype(np.float32))
    weight = PackedWeight(torch.from_numpy(stored.T.copy()), scale, None, bits, group is not None).to(DEVICE)
    norm = torch.from_numpy(rng.random(k).astype(np.float32) + 0.5).to(DEVICE)
    for batch in (2, 5):
        x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32)).to(DEVICE)
        y = torch.zeros(batch, n, device=DEVICE)
        decode_wq_kernels.packed_gemv_batch(x, [weight], y, eps=1e-5, norm=norm)
        for row in range(batch):
            want = torch.zeros(n, device=DEVICE)
            decode_wq_kernels.packed_gemv(x[row], [weight], want, eps=1e-5, norm=norm)
            torch.testing.assert_close(y[row], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, dtype", [("int4", "float32"), ("int8", "float16"), ("int4_awq", "float16")])
def test_fused_greedy_tokens_equal_torch_backend(tmp_path, mode, dtype):
    """A random float model quantized by ``wq_quantize``: ``compile="fused"`` through ModelRunner gives the
    eager torch backend's 16 greedy tokens."""
    config = CheckpointConfig.from_dict({**BASE, "dtype": dtype}).check()
    src = random_checkpoint(tmp_path / "float", config, seed=3)
    quantize_wq(src, tmp_path / mode, mode, group=32)
    eager = ModelRunner.from_dir(tmp_path / mode, device=DEVICE)
    fused = ModelRunner.from_dir(tmp_path / mode, device=DEVICE, compile="fused")
    assert fused.model.decode_path == "fused"
    assert fused.model.model.transformer.blocks()[0].attention.qkv.packed_weight.bits == int(mode[3])
    for prompt in ([torch.tensor([1, 2, 3, 4, 5])], [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([7, 8])]):
        assert torch.equal(fused.generate(prompt, max_new_tokens=16), eager.generate(prompt, max_new_tokens=16))


def gemv(weight: PackedWeight, x: torch.Tensor, blocks: dict | None = None) -> torch.Tensor:
    y = torch.empty(weight.rows, dtype=torch.float32, device=DEVICE)
    decode_wq_kernels.packed_gemv(x, [weight], y, eps=1e-5, blocks=blocks)
    return y


def one_hots(k: int) -> torch.Tensor:
    return torch.eye(k, dtype=torch.float32, device=DEVICE)


@pytest.mark.parametrize("bits, group", [(8, None), (4, None), (4, 16), (8, 16), (4, 24)])
def test_weight_only_unpacking_equals_ckptfmt(bits, group):
    """Column k of the product with e_k is column k of ckptfmt's dequantized weight, exactly, for a weight whose
    bytes take every value (24: a group that is no power of two, one scale load per code)."""
    k, n = 48, 64
    stored = every_byte(k, n // (8 // bits))  # the checkpoint's [in, out (/2)]
    rng = np.random.default_rng(bits)
    scale = (rng.random((k // group, n) if group else n) + 0.5).astype(np.float32)
    want = dequantize_weight_only(stored, scale, f"int{bits}", group)  # [out, in]
    per = torch.from_numpy(scale.T.copy() if group else scale[:, None].copy())
    weight = PackedWeight(torch.from_numpy(stored.T.copy()), per, None, bits, group is not None).to(DEVICE)
    got = torch.stack([gemv(weight, e) for e in one_hots(k)], 1).cpu()
    assert torch.equal(got, torch.from_numpy(want))
    assert torch.equal(weight.dequantized().cpu(), torch.from_numpy(want))


def test_awq_unpacking_equals_ckptfmt():
    """INT4 AWQ ``[out/2, in]`` codes, ``[out, in/group]`` scales and the pre-quant scale against
    ``ckptfmt.quant.dequantize_linear`` (pre-quant folded into the columns)."""
    k, n, group = 64, 32, 16
    stored = every_byte(n // 2, k)
    rng = np.random.default_rng(0)
    scale = (rng.random((n, k // group)) + 0.5).astype(np.float32)
    pre = np.exp2(rng.integers(-2, 3, k)).astype(np.float32)  # powers of two: products stay exact
    want = dequantize_linear(stored, scale, "int4_awq", group) * pre[None, :]
    weight = PackedWeight(torch.from_numpy(stored), torch.from_numpy(scale), torch.from_numpy(pre), 4, True)
    got = torch.stack([gemv(weight.to(DEVICE), e) for e in one_hots(k)], 1).cpu()
    assert torch.equal(got, torch.from_numpy(want))
    assert torch.equal(weight.dequantized().cpu(), torch.from_numpy(want))  # weight.to(DEVICE) moved it


def test_several_steps_and_tail_match_dequantized_product():
    """K over several column steps with a partial last one; our quantizer's int4 codes of a random weight."""
    k, n = 200, 24
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen)
    stored, scale = quantize_weight_only(w.numpy(), "int4")
    weight = PackedWeight(torch.from_numpy(stored.T.copy()), torch.from_numpy(scale[:, None]), None, 4, False)
    x = torch.randn(k, generator=gen).to(DEVICE)
    got = gemv(weight.to(DEVICE), x, {"BR": 2, "GS": 64, "NG": 1, "EACH": False, "num_warps": 4})
    want = torch.from_numpy(dequantize_weight_only(stored, scale, "int4")) @ x.cpu()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
