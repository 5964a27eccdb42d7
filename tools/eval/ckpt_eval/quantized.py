"""Quantized checkpoints in the torch backend (ModelOpt's layouts, docs/checkpoint-format.md), emulated exactly.

FP8 and SmoothQuant weights are dequantized at load (``ckptfmt.quant.dequantize_linear``: e4m3 / int8 codes
times their scales, the smoothing already folded in); what the checkpoint says happens to an FP8 or
SmoothQuant linear's input is an ``InputQuant`` run before it (a forward pre-hook): ``x * prequant_scaling_factor``
(SmoothQuant), then a fake quantization with ``activation_scaling_factor`` (FP8: ``x / s`` clamped to +-448,
rounded to e4m3, times ``s``; INT8 SmoothQuant: rounded to an integer in [-128, 127] (ModelOpt's and TensorRT's
int8 range), per tensor, or per token with ``|row|max / 127`` when the mode says PER_TOKEN). Quantize/dequantize
math is float32; the result goes back to the model dtype. A KV cache of INT8 or FP8 stores the fake-quantized keys
and values (quantized on write with the layer's ``kv_cache_scaling_factor``, the one TensorRT-LLM reads): the same
numbers a cache of codes dequantized on read in float32 holds, so the cache stays in the model dtype.

FP8 and SmoothQuant linears also keep the checkpoint's codes (``QuantWeight``: e4m3 or int8 ``[out, in]`` and a
float32 scale per row, one byte a weight on top of the dequantized copy): the fused decode kernels read them,
and on a GPU with the matching instructions ``native_quant`` computes the linear from them with
``torch._scaled_mm`` (FP8, sm89+) or ``torch._int_mm`` (int8) instead of the emulation. Weight-only int8 / int4
and INT4 AWQ linears are ``PackedLinear``s holding only ``PackedWeight`` (packed codes, float32 group scales,
AWQ's pre-quant scale): ``decode_wq_kernels`` reads it, and each torch-backend call dequantizes the weight from it
(float32, AWQ's pre-quant scale folded into the columns, then the model dtype) and drops it after the GEMM.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ckptfmt import CheckpointConfig, CheckpointError, RankFileReader
from ckptfmt.names import (
    ACTIVATION_SCALE,
    KV_CACHE_SCALE,
    MODELOPT_SCHEMES,
    PER_CHANNEL_SCALE,
    PREQUANT_SCALE,
    WEIGHTS_SCALE,
)
from ckptfmt.quant import dequantize_linear

from . import native_quant
from .model import row_linear

FP8_MAX = 448.0  # float8_e4m3fn's largest finite value
INT8_MAX = 127.0  # the scale maps amax to 127; codes are clamped to [-128, 127] (ModelOpt: narrow_range False)
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")


def fake_quant(x: torch.Tensor, scale: torch.Tensor, kind: str) -> torch.Tensor:
    """``x`` quantized to ``kind`` ('fp8' or 'int8') with ``scale`` (broadcast) and dequantized, in x's dtype."""
    y = x.float() / scale
    if kind == "fp8":
        q = y.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    else:
        q = y.round().clamp(-INT8_MAX - 1, INT8_MAX)
    return (q * scale).to(x.dtype)


def per_token_scale(x: torch.Tensor) -> torch.Tensor:
    """Dynamic int8 scale of each row (token) of ``x``: its largest magnitude / 127 (1 for an all-zero row)."""
    s = x.float().abs().amax(-1, keepdim=True) / INT8_MAX
    return torch.where(s == 0, torch.ones_like(s), s)


class InputQuant(nn.Module):
    """What a quantized linear does to its input: pre-quant scale, then fake quantization (``kind`` 'fp8', 'int8',
    'int8_per_token' or None)."""

    prequant: torch.Tensor | None
    scale: torch.Tensor | None

    def __init__(self, prequant: torch.Tensor | None, scale: torch.Tensor | None, kind: str | None):
        super().__init__()
        self.kind = kind
        self.register_buffer("prequant", prequant, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prequant is not None:
            x = x * self.prequant
        if self.kind == "int8_per_token":
            return fake_quant(x, per_token_scale(x), "int8")
        if self.kind is not None:
            assert self.scale is not None
            return fake_quant(x, self.scale, self.kind)
        return x

    def extra_repr(self) -> str:
        return f"kind={self.kind}, prequant={self.prequant is not None}"


class QuantWeight(nn.Module):
    """A quantized linear's weight as the checkpoint stores it: ``codes`` [out, in] (float8_e4m3fn or int8) and a
    float32 ``scale`` per row [out] (a per-tensor scale repeated); the weight is ``codes * scale[:, None]``."""

    codes: torch.Tensor
    scale: torch.Tensor

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("scale", scale, persistent=False)


def read_codes(reader: RankFileReader, name: str, device) -> QuantWeight:
    """``QuantWeight`` of the FP8 or SmoothQuant linear ``name`` (e.g. ``transformer.layers.0.mlp.fc``)."""
    codes = np.asarray(reader[f"{name}.weight"])
    if codes.dtype == np.int8:
        t = torch.from_numpy(np.array(codes))
    else:  # ml_dtypes.float8_e4m3fn: same bytes
        t = torch.from_numpy(np.array(codes).view(np.uint8)).view(torch.float8_e4m3fn)
    scale = np.asarray(reader[f"{name}.{WEIGHTS_SCALE}"], dtype=np.float32).reshape(-1)
    rows = torch.from_numpy(np.array(np.broadcast_to(scale, (codes.shape[0],))))
    return QuantWeight(t.to(device), rows.to(device))


def stack_fc_gate(mlp: nn.Module) -> None:
    """A gated MLP's fc and gate codes as one [fc; gate] tensor (``mlp.quant_fc_gate``; fc's and gate's
    ``quant_weight`` become views of it), so the fused step reads both with one GEMV."""
    fc, gate = mlp.get_submodule("fc"), getattr(mlp, "gate", None)
    if gate is None or not hasattr(fc, "quant_weight"):
        return
    a, b = cast(QuantWeight, fc.get_submodule("quant_weight")), cast(QuantWeight, gate.get_submodule("quant_weight"))
    both = QuantWeight(torch.cat([a.codes, b.codes]), torch.cat([a.scale, b.scale]))
    n = a.codes.shape[0]
    fc.quant_weight = QuantWeight(both.codes[:n], both.scale[:n])
    gate.quant_weight = QuantWeight(both.codes[n:], both.scale[n:])
    mlp.quant_fc_gate = both


class PackedWeight(nn.Module):
    """A weight-only (int8 / int4) or INT4 AWQ linear's codes as the fused decode step reads them, with no
    float copy: ``codes`` int8 ``[out, in]`` (``bits`` 8) or ``[out/2, in]`` (``bits`` 4: rows 2j, 2j+1 in the
    low, high nibble of a byte, INT4 AWQ's layout); float32 ``scale`` ``[out, in/group]`` (per channel:
    ``[out, 1]``, ``group`` = in); AWQ's float32 ``prequant`` ``[in]``, which multiplies the input. The weight
    is ``unpack(codes) * scale[:, k // group]`` times ``prequant[k]`` in column k (``decode_wq_kernels``)."""

    codes: torch.Tensor
    scale: torch.Tensor
    prequant: torch.Tensor | None

    def __init__(self, codes, scale, prequant, bits: int, per_group: bool):
        super().__init__()
        self.bits, self.per_group = bits, per_group
        self.rows = codes.shape[0] * (8 // bits)
        self.group = codes.shape[1] // scale.shape[1]
        self.register_buffer("codes", codes.contiguous(), persistent=False)
        self.register_buffer("scale", scale.float().contiguous(), persistent=False)
        self.register_buffer("prequant", None if prequant is None else prequant.float().contiguous(), persistent=False)
        half = (torch.float16, torch.bfloat16)
        self.exact_in = {torch.float32, *(t for t in half if torch.equal(self.scale.to(t).float(), self.scale))}

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``[out, in]`` weight in ``dtype``, pre-quant scale folded into the columns: each weight the float32
        product of its code and scales, rounded to ``dtype`` (as ``ckptfmt.quant`` dequantizes). Without a
        pre-quant scale, and with scales that ``dtype`` holds exactly (weight-only scales are stored in the model
        dtype), it is computed in ``dtype`` itself: a code has at most 8 significant bits, so the float32 product
        is exact and one ``dtype`` multiply rounds it the same way, with half the bytes to write."""
        codes = self.codes
        if self.bits == 4:  # rows 2j, 2j+1: low, high nibble, sign-extended by the arithmetic right shift
            codes = torch.stack([(codes << 4) >> 4, codes >> 4], 1).reshape(self.rows, codes.shape[1])
        direct = self.prequant is None and dtype in self.exact_in
        w = codes.to(dtype if direct else torch.float32)
        groups = self.scale.shape[1]
        w.view(self.rows, groups, w.shape[1] // groups).mul_(self.scale.to(w.dtype)[:, :, None])
        if self.prequant is not None:
            w.mul_(self.prequant)
        return w.to(dtype)


class PackedLinear(nn.Module):
    """A weight-only int8 / int4 or INT4 AWQ linear that keeps only its codes (``packed_weight``): each call
    dequantizes the weight (float32, then the model ``dtype``) and drops it after the GEMM, so the model holds ½
    or 1 byte a weight instead of 2. The fused decode step reads the codes themselves. ``reduce``: a row-parallel
    linear's ``Parallel`` (partial products summed over the tp ranks, then the bias added once)."""

    def __init__(self, packed: PackedWeight, in_features: int, bias: nn.Parameter | None, dtype, reduce=None):
        super().__init__()
        self.packed_weight = packed
        self.in_features, self.out_features, self.dtype, self.reduce = in_features, packed.rows, dtype, reduce
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the model dtype, computed on each access (never stored)."""
        return self.packed_weight.dequantized(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce is None:
            return F.linear(x, self.weight, self.bias)
        return row_linear(self.reduce, x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.packed_weight.bits}"


def pack_linears(model: nn.Module, reader: RankFileReader, config: CheckpointConfig, device, dtype) -> None:
    """Replace each weight-only / INT4 AWQ linear of ``model``'s layers by a ``PackedLinear`` holding the codes of
    ``reader`` (before the other weights load: its ``.weight`` is then no parameter to read)."""
    for i, layer in enumerate(model.get_submodule("transformer.layers").children()):
        for linear in LINEARS:
            name = f"transformer.layers.{i}.{linear}"
            if f"{name}.weight" not in reader:
                continue  # no gate in a plain MLP
            parent, _, leaf = linear.rpartition(".")
            old = layer.get_submodule(linear)
            rows, cols = cast(torch.Tensor, old.weight).shape
            packed = read_packed(reader, name, config, device)
            if (packed.rows, packed.codes.shape[1]) != (rows, cols):
                shape = [packed.rows, packed.codes.shape[1]]
                raise CheckpointError(f"tensor {name}.weight: holds a {shape} weight, the model expects {[rows, cols]}")
            reduce = getattr(old, "par", None)  # a RowLinear
            bias = cast(nn.Parameter | None, old.bias)
            setattr(layer.get_submodule(parent), leaf, PackedLinear(packed, cols, bias, dtype, reduce))


def packs_weights(config: CheckpointConfig) -> bool:
    """Whether the linears are weight-only int8 / int4 or INT4 AWQ (``PackedWeight``)."""
    return config.quantization.scheme in ("weight_only", "int4_awq")


def read_packed(reader: RankFileReader, name: str, config: CheckpointConfig, device) -> PackedWeight:
    """``PackedWeight`` of the linear ``name`` (e.g. ``transformer.layers.0.mlp.fc``). INT4 AWQ's tensors are
    its layout as stored; the weight-only ``[in, out]`` (int4 ``[in, out/2]``) bytes are transposed whole, each
    byte kept (its two int4 values stay paired as stored), and the ``[in/group, out]`` scales with them."""
    q = config.quantization
    codes = torch.from_numpy(np.array(reader[f"{name}.weight"]))
    if q.scheme == "int4_awq":
        scale = torch.from_numpy(np.array(reader[f"{name}.{WEIGHTS_SCALE}"], dtype=np.float32))
        pre = torch.from_numpy(np.array(reader[f"{name}.{PREQUANT_SCALE}"], dtype=np.float32))
        packed = PackedWeight(codes, scale, pre, 4, True)
    else:
        scale = torch.from_numpy(np.array(reader[f"{name}.{PER_CHANNEL_SCALE}"], dtype=np.float32))
        scale = scale.T if q.per_group else scale[:, None]
        packed = PackedWeight(codes.T, scale, None, 4 if q.weight_only_precision == "int4" else 8, q.per_group)
    return packed.to(device)


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    quant = module.get_submodule("input_quant")
    return (quant(args[0]), *args[1:])


def is_modelopt(config: CheckpointConfig) -> bool:
    return config.quantization.scheme in MODELOPT_SCHEMES


def quantizes_inputs(config: CheckpointConfig) -> bool:
    """Whether the linears quantize their inputs (FP8, SmoothQuant): then each keeps its own ``InputQuant``."""
    return activation_kind(config) is not None


def read_linear_weight(reader: RankFileReader, name: str, config: CheckpointConfig) -> torch.Tensor | None:
    """The float32 ``[out, in]`` weight ``name`` dequantized, when it is one of an FP8 or INT8 SmoothQuant linear
    (INT4 AWQ's are ``PackedLinear``s: ``pack_linears``)."""
    scale_name = name[: -len("weight")] + WEIGHTS_SCALE
    if not (quantizes_inputs(config) and name.endswith(".weight") and scale_name in reader):
        return None
    q = config.quantization
    w = dequantize_linear(reader[name], reader[scale_name], q.scheme, q.group_size)
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


def activation_kind(config: CheckpointConfig) -> str | None:
    q = config.quantization
    if q.scheme == "fp8":
        return "fp8"
    if q.scheme == "int8_sq":
        return "int8_per_token" if q.per_token else "int8"
    return None  # AWQ: weights only


def attach(model: nn.Module, reader: RankFileReader, config: CheckpointConfig, device, dtype) -> None:
    """Give each quantized linear of ``model``'s layers its ``InputQuant`` and each attention its KV-cache
    quantization (``kv_quant``), from the scales in ``reader``."""

    def scale(name: str, as_dtype=torch.float32) -> torch.Tensor | None:
        if name not in reader:
            return None
        return torch.from_numpy(np.array(reader[name], dtype=np.float32)).to(device=device, dtype=as_dtype)

    kind = activation_kind(config)
    kv_kind = (config.quantization.kv_cache or "").lower() or None
    for i, layer in enumerate(model.get_submodule("transformer.layers").children()):
        prefix = f"transformer.layers.{i}."
        if kind is not None:  # AWQ's pre-quant scale is folded into its weight (read_linear_weight)
            for linear in LINEARS:
                if f"{prefix}{linear}.weight" not in reader:
                    continue  # no gate in a plain MLP
                pre = scale(f"{prefix}{linear}.{PREQUANT_SCALE}", dtype)
                act = scale(f"{prefix}{linear}.{ACTIVATION_SCALE}")
                if kind != "int8_per_token" and act is None:
                    raise CheckpointError(f"missing tensor {prefix}{linear}.{ACTIVATION_SCALE}")
                module = layer.get_submodule(linear)
                module.input_quant = InputQuant(pre, act, kind)
                module.quant_weight = read_codes(reader, f"{prefix}{linear}", device)
                if not native_quant.attach_native(module, kind, dtype):  # else it computes from the codes
                    module.register_forward_pre_hook(_quantize_input)
            stack_fc_gate(layer.get_submodule("mlp"))
        if kv_kind is not None:
            kv = scale(f"{prefix}attention.{KV_CACHE_SCALE}")
            if kv is None:
                raise CheckpointError(f"missing tensor {prefix}attention.{KV_CACHE_SCALE}")
            layer.get_submodule("attention").kv_quant = KVQuant(kv, kv_kind)


class KVQuant(nn.Module):
    """Keys and values quantized on their way into the cache (``kind`` 'int8' or 'fp8', one per-tensor scale)."""

    scale: torch.Tensor

    def __init__(self, scale: torch.Tensor, kind: str):
        super().__init__()
        self.kind = kind
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, self.scale, self.kind)
