"""``quantized.PackedWeight.dequantized``: the weight a weight-only / INT4 AWQ ``PackedLinear`` multiplies, computed
in the model dtype where that gives the float32 product's rounding bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckpt_eval.quantized import PackedWeight  # noqa: E402
from ckptfmt.quant import dequantize_weight_only  # noqa: E402


def every_byte(rows: int, cols: int) -> np.ndarray:
    """int8 [rows, cols] holding every byte value (so every int4 pair) in every column and a row-dependent mix."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return ((r * 7 + c * 13) % 256).astype(np.uint8).view(np.int8)


def scales(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Scales as the model dtype stores them: normal values over a wide range, the dtype's subnormals and its
    largest finite value (whose products with codes overflow to infinity)."""
    gen = torch.Generator().manual_seed(0)
    s = torch.exp2(torch.rand(shape, generator=gen) * 30 - 20).to(dtype)
    flat = s.view(-1)
    flat[0], flat[1] = torch.finfo(dtype).smallest_normal / 8, torch.finfo(dtype).max
    return s.float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits, groups", [(8, 1), (4, 1), (8, 4), (4, 4)])
def test_model_dtype_product_is_the_rounded_float32_product(dtype, bits, groups):
    out, k = 64, 96
    codes = torch.from_numpy(every_byte(out * bits // 8, k))
    weight = PackedWeight(codes, scales((out, groups), dtype), None, bits, groups > 1)
    assert dtype in weight.exact_in  # the direct path is the one under test
    want = weight.dequantized().to(dtype)  # float32, then rounded
    got = weight.dequantized(dtype)
    assert got.dtype == dtype and torch.equal(got.view(torch.int16), want.view(torch.int16))
    if bits == 8 and groups == 1:  # and it is ckptfmt's dequantization of the stored [in, out] layout
        with np.errstate(over="ignore"):  # the largest scale times a code: infinity, in both
            ref = dequantize_weight_only(codes.T.numpy(), weight.scale[:, 0].numpy(), "int8")
        assert torch.equal(weight.dequantized(), torch.from_numpy(np.ascontiguousarray(ref)))


def test_float32_scales_and_prequant_go_through_float32():
    """INT4 AWQ: float32 scales the model dtype cannot hold, and the pre-quant scale's second product."""
    out, k = 32, 64
    gen = torch.Generator().manual_seed(1)
    scale, pre = torch.rand(out, 4, generator=gen) + 0.5, torch.rand(k, generator=gen) + 0.5
    weight = PackedWeight(torch.from_numpy(every_byte(out // 2, k)), scale, pre, 4, True)
    assert weight.exact_in == {torch.float32}
    assert torch.equal(weight.dequantized(torch.float16), weight.dequantized().to(torch.float16))
    no_pre = PackedWeight(torch.from_numpy(every_byte(out // 2, k)), scale, None, 4, True)
    assert torch.float16 not in no_pre.exact_in
