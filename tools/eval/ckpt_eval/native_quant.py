"""FP8 and int8 SmoothQuant linears on the GPU's own low-precision GEMMs, where it has them.

``quantized`` emulates a quantized linear (fake-quantized input times the dequantized weight, in the model
dtype). On CUDA this module computes the same product from the codes instead: FP8 through
``torch._scaled_mm`` (e4m3 x e4m3, float32 accumulation, sm89+), int8 SmoothQuant through ``torch._int_mm``
(int8 x int8, int32 accumulation; from 17 rows on, the smallest it takes, so decode steps stay emulated).
The input is quantized exactly as ``InputQuant`` does it; the results differ from the emulation only in
where the model dtype rounds (the emulation rounds the dequantized weight and input, these GEMMs their
float32 result). float32 models keep the FP8 emulation (FP8 tensor cores accumulate in less than float32
precision), and ``CKPT_EVAL_NATIVE_QUANT=0`` keeps it for all; a GPU or torch whose GEMM fails a probe
(one small product against the emulation) keeps it too, and says so once on stderr.
``tests/eval/test_quantized_native.py`` (CUDA only) compares both paths.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .quantized import InputQuant, QuantWeight

FP8_MAX = 448.0
ALIGN = 16  # _scaled_mm: K and N multiples of 16 (rows padded to 16 too); _int_mm: multiples of 8
INT_MM_MIN_ROWS = 17  # _int_mm takes more than 16 rows


def enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("CKPT_EVAL_NATIVE_QUANT", "1") != "0"


def native_kind(kind: str | None, device: torch.device) -> str | None:
    """'fp8' (sm89+ and ``torch._scaled_mm``), 'int8' (``torch._int_mm``) or None: what runs natively here."""
    if kind is None or not enabled(device):
        return None
    if kind == "fp8":
        ok = hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(device) >= (8, 9)
        return "fp8" if ok else None
    return "int8" if hasattr(torch, "_int_mm") else None


def _row_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = (-x.shape[0]) % multiple
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def scaled_mm_fp8(x: torch.Tensor, in_scale: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """``fake_quant(x, in_scale, 'fp8') @ (codes * w_scale).T`` for x [m, k] (model dtype), codes [n, k] e4m3,
    per-tensor float32 scales; computed by ``torch._scaled_mm``, result in x's dtype."""
    m = x.shape[0]
    q = (_row_pad(x, ALIGN).float() / in_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    out = torch._scaled_mm(q, codes.t(), scale_a=in_scale.reshape(()), scale_b=w_scale.reshape(()), out_dtype=x.dtype)
    out = out[0] if isinstance(out, tuple) else out  # torch < 2.5 returned (out, amax)
    return out[:m]


def int_mm_int8(x: torch.Tensor, in_scale: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """``fake_quant(x, in_scale, 'int8') @ (codes * w_scale).T`` for x [m > 16, k], codes [n, k] int8,
    ``in_scale`` [1] or per row [m, 1], ``w_scale`` [n]; ``torch._int_mm``, result in x's dtype."""
    q = (x.float() / in_scale).round().clamp(-128, 127).to(torch.int8)
    acc = torch._int_mm(q, codes.t())
    return (acc.float() * in_scale * w_scale).to(x.dtype)


class NativeLinear(nn.Module):
    """The product of a quantized linear from its codes (``kind`` 'fp8' or 'int8'); ``per_token``: int8 with a
    scale per row. The owner's ``input_quant`` (prequant, scale) and ``quant_weight`` (codes, scales) are read."""

    def __init__(self, kind: str, per_token: bool):
        super().__init__()
        self.kind, self.per_token = kind, per_token

    def forward(self, owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
        iq = cast("InputQuant", owner.get_submodule("input_quant"))
        qw = cast("QuantWeight", owner.get_submodule("quant_weight"))
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.kind == "int8" and x2.shape[0] < INT_MM_MIN_ROWS:
            y = F.linear(iq(x2), cast(torch.Tensor, owner.weight))  # the emulation
        else:
            if iq.prequant is not None:
                x2 = x2 * iq.prequant
            if self.kind == "fp8":
                assert iq.scale is not None  # attach() requires the activation scale of FP8
                y = scaled_mm_fp8(x2, iq.scale, qw.codes, qw.scale[:1])
            else:
                s = per_token_scale(x2) if self.per_token or iq.scale is None else iq.scale
                y = int_mm_int8(x2, s, qw.codes, qw.scale)
        return y.reshape(*shape[:-1], y.shape[-1])


def per_token_scale(x: torch.Tensor) -> torch.Tensor:
    """``quantized.per_token_scale`` (the same formula, not imported: quantized imports this module)."""
    s = x.float().abs().amax(-1, keepdim=True) / 127.0
    return torch.where(s == 0, torch.ones_like(s), s)


def _native_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``forward`` of an nn.Linear or a RowLinear (``par``: partial sums all-reduced) computed natively."""
    y = self.get_submodule("native")(self, x)
    par = getattr(self, "par", None)
    if par is not None:
        y = par.all_reduce(y)
    return y + self.bias if self.bias is not None else y


def attach_native(module: nn.Module, kind: str, dtype: torch.dtype) -> bool:
    """Make ``module`` (with ``input_quant`` and ``quant_weight`` attached) compute natively where this GPU can;
    False: it stays emulated (the caller registers the fake quantization of its input)."""
    qw = cast("QuantWeight", module.get_submodule("quant_weight"))
    native = native_kind("int8" if kind.startswith("int8") else kind, qw.codes.device)
    if native is None or (native == "fp8" and dtype == torch.float32):
        return False  # Hopper's FP8 tensor cores add in less than float32 precision: float32 models stay exact
    n, k = qw.codes.shape
    if n % ALIGN or k % ALIGN or (native == "fp8" and bool((qw.scale != qw.scale[0]).any())):
        return False  # shapes the GEMM does not take; per-row FP8 weight scales are not ModelOpt's layout
    problem = probe(native, str(qw.codes.device), dtype)
    if problem is not None:
        return False
    module.native = NativeLinear(native, kind == "int8_per_token")
    module.forward = types.MethodType(_native_forward, module)
    return True


@functools.cache
def probe(kind: str, device: str, dtype: torch.dtype) -> str | None:
    """Why the native GEMM of ``kind`` cannot be used on ``device`` for ``dtype`` (None: it can): one product of
    32 x 64 by 64 x 32 against the emulation (relative error within the model dtype's rounding)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, generator=gen).to(device=device, dtype=dtype)
    w = torch.randn(32, 64, generator=gen).to(device)
    in_scale = torch.tensor([x.float().abs().max().item() / (FP8_MAX if kind == "fp8" else 127.0)], device=device)
    try:
        if kind == "fp8":
            w_scale = torch.tensor([w.abs().max().item() / FP8_MAX], device=device)
            codes = (w / w_scale).to(torch.float8_e4m3fn)
            got = scaled_mm_fp8(x, in_scale, codes, w_scale)
            xq = ((x.float() / in_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * in_scale).to(dtype)
        else:
            w_scale = w.abs().amax(1) / 127.0
            codes = (w / w_scale[:, None]).round().clamp(-128, 127).to(torch.int8)
            got = int_mm_int8(x, in_scale, codes, w_scale)
            xq = ((x.float() / in_scale).round().clamp(-128, 127) * in_scale).to(dtype)
        want = F.linear(xq, (codes.float() * w_scale.reshape(-1, 1)).to(dtype)).float()
        err = float((got.float() - want).abs().max() / want.abs().max())
    except (RuntimeError, TypeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        if err <= 2e-2:
            return None
        reason = f"relative error {err:.2e} against the emulation"
    print(f"ckpt_eval: the native {kind} GEMM is not used ({reason}); the emulation computes it", file=sys.stderr)
    return reason
