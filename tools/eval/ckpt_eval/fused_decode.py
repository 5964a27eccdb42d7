"""The one-token decode step as five fused Triton kernels per layer, captured once as a CUDA graph (batch 1).

Per layer (``decode_kernels``): RMSNorm + qkv GEMV; rotary + KV-cache write + grouped-query attention;
dense GEMV + residual add; RMSNorm + fc/gate GEMV + gated activation; proj GEMV + residual add. Then the
final norm + lm_head GEMV. That is ~5 kernels per layer instead of the ~14 that ``torch.compile`` makes of
``model.Transformer``, and it is what brings batch-1 decode near the memory-bandwidth bound
(docs/performance.md). The weights, the KV cache and the prefill are ``model.Transformer``'s own: only the
one-token step is replaced, and ``tests/eval/test_fused_decode.py`` checks it against that model.

Covers the LLaMA-like decoders (pre-norm RMSNorm, rotary, optional biases, gated or plain MLP) on one rank;
``unsupported`` names what else a model has, and the torch backend then uses ``torch.compile`` instead.
FP8 and INT8 SmoothQuant checkpoints run from their codes (``quantized.QuantWeight``: the GEMVs read e4m3 or
int8 weights, a byte each, and quantize their inputs as ``quantized.InputQuant`` does), INT8/FP8 KV caches
as ``quantized.KVQuant`` does (``tests/eval/test_fused_decode_quantized.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import cast

import torch

from ckptfmt.semantics import FUSED, support_rows

from .model import Block, KVCache, Transformer
from .quantized import InputQuant, PackedWeight, QuantWeight

# ``ModelSpec.activation`` -> the kernel's activation
KERNEL_ACTIVATIONS = {"silu": "silu", "relu": "relu", "gelu_erf": "gelu", "gelu_tanh": "gelu_tanh"}
MAX_BATCH = 1  # from batch 2 on, torch.compile's GEMMs are faster than these GEMVs (docs/performance.md)


def unsupported(model: Transformer) -> str | None:
    """Why the fused step cannot run ``model`` (None when it can)."""
    spec, par = model.spec, model.par
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if par.distributed:
        return "it runs on one rank only (this checkpoint has tp x pp > 1)"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"it needs a CUDA device (the model is on {device.type})"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    features = [  # the model features the kernels do not compute, with who does (ckptfmt.semantics)
        f"{name} {value!r} (supported by: {', '.join(who) or 'none'})"
        for name, value, who in support_rows(spec)
        if FUSED not in who
    ]
    if features:
        return f"the kernels do not compute {', '.join(features)}"
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the model has dtype {dtype}"
    if spec.norm != "rmsnorm" and any(isinstance(m, PackedWeight) for m in model.modules()):
        return "its weight-only / AWQ GEMVs (decode_wq_kernels) take RMSNorm inputs only"
    fp8 = [m.codes for m in model.modules() if isinstance(m, QuantWeight) and m.codes.dtype == torch.float8_e4m3fn]
    if fp8 and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return "its float8 e4m3 weights need an sm89+ GPU (Ada, Hopper or later)"
    if any(bool(((c.view(torch.uint8) & 0x7F) == 0x7F).any()) for c in fp8):
        return "a float8 weight holds NaN codes"
    return None


def gemv_blocks(k: int) -> dict:
    """Launch parameters of ``gemv_kernel`` for a weight of ``k`` columns: 4 rows x up to 1024 columns per
    step of a program, 8 warps (bench/fused_decode.py's sweep on an H100: within 4 % of the best found for
    TinyLlama-1.1B's qkv, dense, fc/gate and proj; docs/performance.md)."""
    return {"BN": 4, "BK": min(1024, triton_next_pow2(k)), "num_warps": 8}


def attention_blocks(cache_length: int) -> dict:
    """How ``decode_attention_kernel`` covers a cache of ``cache_length`` positions. Up to 512 positions one
    program per head walks them all; beyond, each head's positions are split over 16 programs of CHUNK
    positions, and ``attention_combine_kernel`` merges their partials. From bench/fused_decode.py's sweep on
    an H100, per layer: 3.2 us at 96 positions, 5.6 us at 1024, 12.9 us at 4096 (1024 unsplit: 10.7)."""
    if cache_length <= 512:
        return {"BLOCK_S": 128, "num_warps": 2, "SPLITS": 1, "CHUNK": cache_length}
    chunk = math.ceil(cache_length / 16)
    return {"BLOCK_S": min(256, max(64, triton_next_pow2(chunk))), "num_warps": 2, "SPLITS": 16, "CHUNK": chunk}


def use_pdl(device: torch.device) -> bool:
    """Programmatic dependent launch: on sm90+ GPUs unless ``CKPT_EVAL_PDL=0``."""
    return (
        device.type == "cuda"
        and torch.cuda.get_device_capability(device)[0] >= 9
        and os.environ.get("CKPT_EVAL_PDL", "1") != "0"
    )


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class Operands:
    """What ``gemv_kernel`` reads for one linear besides its input: the weight (float, or codes with a float32
    scale per row ``ws``), the activation scale(s) ``xs`` and pre-quant scale(s) ``pre``, and the flags."""

    w: torch.Tensor
    ws: torch.Tensor | None = None
    xs: torch.Tensor | None = None
    pre: torch.Tensor | None = None
    flags: dict | None = None
    packed: list[PackedWeight] | None = None  # weight-only / AWQ codes (``decode_wq_kernels``): [W] or [fc, gate]


def operands(linears: list, float_weight: torch.Tensor, codes: QuantWeight | None) -> Operands:
    """``Operands`` of a linear (``linears``: [fc, gate] for the stacked fc/gate): its float weight, or where it is
    quantized (``quantized.attach``) its ``codes`` (``QuantWeight``) and its input's quantization."""
    if getattr(linears[0], "packed_weight", None) is not None:
        return Operands(float_weight, packed=[m.packed_weight for m in linears])
    if getattr(linears[0], "input_quant", None) is None:
        return Operands(float_weight)
    quants = [cast(InputQuant, m.input_quant) for m in linears]
    assert codes is not None and quants[0].kind is not None
    k = float_weight.shape[1]
    kind = {"fp8": "fp8", "int8": "int8", "int8_per_token": "int8_tok"}[quants[0].kind]
    has_pre = any(q.prequant is not None for q in quants)  # a missing one multiplies by 1
    ones = torch.ones(1, dtype=torch.float32, device=float_weight.device)
    xs = torch.cat([q.scale.reshape(1).float() if q.scale is not None else ones for q in quants])
    pre = (
        torch.cat([q.prequant if q.prequant is not None else float_weight.new_ones(k) for q in quants])
        if has_pre
        else None
    )
    split = len(quants) > 1 and (bool((xs != xs[0]).any()) or (pre is not None and not torch.equal(*pre.chunk(2))))
    flags = dict(WQ=True, AQ=kind, HAS_PRE=has_pre, SPLIT_ACT=split)
    return Operands(codes.codes, codes.scale, xs.contiguous(), pre, flags)


@dataclass
class CapturedStep:
    """A captured step and every buffer its kernels read or write (they must outlive the graph)."""

    cache: int  # address of the KV cache it was captured with
    graph: torch.cuda.CUDAGraph
    buffers: dict
    logits: torch.Tensor


class FusedDecoder:
    """Callable like ``Transformer.forward`` for one-token steps: ``(tokens [b, 1], slots [1], pad [b])`` ->
    float32 logits [b, 1, vocab]. On CUDA the step is captured once as a CUDA graph (again when the KV
    cache is reallocated) and replayed; batches over ``MAX_BATCH`` go to ``fallback``."""

    def __init__(self, model: Transformer, fallback=None, cuda_graphs: bool = True):
        reason = unsupported(model)
        if reason:
            raise ValueError(f"fused decode: {reason}")
        from . import decode_kernels

        self.kernels = decode_kernels
        self.model, self.fallback = model, fallback
        spec = model.spec
        self.act = KERNEL_ACTIVATIONS[spec.activation]
        self.eps = spec.norm_epsilon
        # Gemma's embedding scale, rounded to the model dtype as the torch backend's (``Transformer.embed``)
        p = next(model.parameters())
        self.embedding_scale = torch.tensor(spec.embedding_scale, dtype=p.dtype, device=p.device)
        self.linears = []  # per layer: Operands of qkv, dense, fc (or [fc; gate]), proj
        for layer in model.transformer.blocks():
            a, mlp = layer.attention, layer.mlp
            quantized = getattr(a.qkv, "input_quant", None) is not None
            if mlp.gate is not None and mlp.fc_gate is None and not quantized:
                mlp.fuse()  # [fc; gate] as one weight: one GEMV reads both (load_model has done it)
            fc = [mlp.fc, mlp.gate] if mlp.gate is not None else [mlp.fc]
            fc_weight = mlp.fc_gate if mlp.fc_gate is not None else mlp.fc.weight
            fc_bias: torch.Tensor | None = mlp.fc.bias
            if mlp.gate is not None and mlp.fc.bias is not None:  # [fc; gate] (fuse() stacked the float path's)
                fc_bias = mlp.fc_gate_bias if mlp.fc_gate is not None else torch.cat([mlp.fc.bias, mlp.gate.bias])
            self.linears.append(
                (
                    operands([a.qkv], a.qkv.weight, getattr(a.qkv, "quant_weight", None)),
                    operands([a.dense], a.dense.weight, getattr(a.dense, "quant_weight", None)),
                    operands(fc, fc_weight, getattr(mlp, "quant_fc_gate", getattr(mlp.fc, "quant_weight", None))),
                    operands([mlp.proj], mlp.proj.weight, getattr(mlp.proj, "quant_weight", None)),
                    fc_bias,
                )
            )
        if not all(p.is_contiguous() for p in model.parameters()):
            raise ValueError("fused decode: the kernels read contiguous weights")
        first = model.transformer.blocks()[0].attention
        self.heads, self.kv_heads, self.head_size = first.heads, first.kv_heads, first.head_size
        self.rotary_dim = spec.rotary_dim
        device = next(model.parameters()).device
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.pdl = use_pdl(device)
        self.graph: CapturedStep | None = None

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, last_only: bool = True):
        b = inputs.shape[0]
        if inputs.shape[1] != 1 or (b > MAX_BATCH and self.fallback is None):
            raise ValueError(f"fused decode takes one token of at most {MAX_BATCH} sequence, got {tuple(inputs.shape)}")
        if b > MAX_BATCH:
            return self.fallback(inputs, slots, pad, last_only=last_only)
        if not self.cuda_graphs:
            return self.step(inputs.view(b), slots.view(1), pad, self.buffers()).view(b, 1, -1)
        key = self.cache().kv.data_ptr()
        if self.graph is None or self.graph.cache != key:
            self.graph = None  # its memory goes back before the new capture
            self.graph = self.capture(inputs, slots, pad)
        g = self.graph
        g.buffers["tokens"].copy_(inputs.view(b))
        g.buffers["slot"].copy_(slots.view(1))
        g.buffers["pad"].copy_(pad)
        g.graph.replay()
        return g.logits.view(b, 1, -1)

    def capture(self, inputs, slots, pad) -> CapturedStep:
        """Warm the kernels up (triton compiles at first launch) on a side stream, then capture one step."""
        buffers = self.buffers()
        buffers.update(tokens=inputs.view(-1).clone(), slot=slots.view(1).clone(), pad=pad.clone())
        run = lambda: self.step(buffers["tokens"], buffers["slot"], buffers["pad"], buffers)  # noqa: E731
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()  # the same inputs as the replay that follows: the same cache write
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = run()
        key = self.cache().kv.data_ptr()
        return CapturedStep(key, graph, buffers, logits)

    def cache(self) -> KVCache:
        """The first layer's KV cache (``setup_cache`` has allocated it)."""
        cache = cast(Block, self.model.transformer.layers[0]).attention.kv_cache
        assert cache is not None, "setup_cache allocates the KV caches"
        return cache

    def buffers(self) -> dict:
        model, spec = self.model, self.model.spec
        p = next(model.parameters())
        layer = model.transformer.blocks()[0]
        width = layer.attention.qkv.weight.shape[0]
        ffn = layer.mlp.fc.weight.shape[0]
        splits = attention_blocks(self.cache().length)["SPLITS"]  # attention partials
        empty = lambda n, dtype=p.dtype: torch.empty(n, dtype=dtype, device=p.device)  # noqa: E731
        return {
            "x": torch.empty(1, spec.hidden_size, dtype=p.dtype, device=p.device),  # index_select's output
            "qkv": empty(width),
            "attn": empty(self.heads * self.head_size),
            "mlp": empty(ffn),
            "logits": empty(model.lm_head.weight.shape[0], torch.float32),
            "parts": empty(self.heads * splits * (triton_next_pow2(self.head_size) + 2), torch.float32),
        }

    def gemv(self, x, op: Operands, y, *, norm=None, bias=None, res=None, gated=False, act="none") -> None:
        """``y = act(W @ norm(x) + bias) (+ res)`` (gated: W holds [fc; gate]) as one ``gemv_kernel``; W and the
        input's quantization from ``op``."""
        if op.packed is not None:  # weight-only / AWQ codes (``decode_wq_kernels``)
            from .decode_wq_kernels import packed_gemv

            packed_gemv(x, op.packed, y, eps=self.eps, norm=norm, bias=bias, res=res, act=act, pdl=self.pdl)
            return
        w = op.w
        n, k = w.shape[0] // (2 if gated else 1), w.shape[1]
        blocks = gemv_blocks(k)
        pdl = {"launch_pdl": True} if self.pdl else {}
        self.kernels.gemv_kernel[(math.ceil(n / blocks["BN"]),)](
            x, w if norm is None else norm, w, w if bias is None else bias, y, y if res is None else res,
            w if op.ws is None else op.ws, w if op.xs is None else op.xs, w if op.pre is None else op.pre, n, k,
            self.eps, HAS_NORM=norm is not None, HAS_BIAS=bias is not None, HAS_RES=res is not None,
            GATED=gated, ACT=act, PDL=self.pdl, **(op.flags or {}), **blocks, **pdl,
        )  # fmt: skip

    def attention(self, qkv, cache, out, parts, slot, pad, quant=None) -> None:
        """Rotary, the cache write at ``slot`` and attention over the cache: one ``decode_attention_kernel``,
        plus ``attention_combine_kernel`` where the cache is long enough to be split."""
        kv, rotary = cache.kv, self.model.rotary
        kv_quant = {} if quant is None else {"KV_SCALE": quant.scale, "KVQ": quant.kind}
        assert rotary is not None  # unsupported() refuses models without rotary embeddings
        pdl = {"launch_pdl": True} if self.pdl else {}
        blocks = attention_blocks(kv.shape[3])
        splits, chunk = blocks.pop("SPLITS"), blocks.pop("CHUNK")
        bd = triton_next_pow2(self.head_size)
        self.kernels.decode_attention_kernel[(self.heads, splits)](
            qkv, kv, out, rotary.inv_freq, slot, pad, parts, chunk, kv.stride(0), kv.stride(2),
            HEADS=self.heads, KV_HEADS=self.kv_heads, D=self.head_size, BD=bd, ROT=self.rotary_dim,
            INTERLEAVED=self.model.spec.rotary_interleaved, SPLITS=splits, SCALE=1.0 / math.sqrt(self.head_size),
            PDL=self.pdl, **kv_quant, **blocks, **pdl,
        )  # fmt: skip
        if splits > 1:
            self.kernels.attention_combine_kernel[(self.heads,)](
                parts, out, HEADS=self.heads, D=self.head_size, BD=bd, SPLITS=splits, PDL=self.pdl,
                num_warps=1, **pdl,
            )  # fmt: skip

    def step(self, tokens: torch.Tensor, slot: torch.Tensor, pad: torch.Tensor, buf: dict) -> torch.Tensor:
        """Launch the kernels of one step; returns the logits buffer [vocab] (float32)."""
        model, spec = self.model, self.model.spec
        t = model.transformer
        x = buf["x"]
        torch.index_select(t.vocab_embedding.weight, 0, tokens, out=x)
        if spec.embedding_scale != 1:
            x.mul_(self.embedding_scale)
        assert spec.mlp_norm is not None  # unsupported() refuses layers without an MLP norm
        for layer, (qkv, dense, fc, proj, fc_bias) in zip(t.blocks(), self.linears, strict=True):
            a, mlp = layer.attention, layer.mlp
            self.gemv(x, qkv, buf["qkv"], norm=getattr(layer, spec.attn_norm).weight, bias=a.qkv.bias)
            self.attention(buf["qkv"], a.kv_cache, buf["attn"], buf["parts"], slot, pad, a.kv_quant)
            self.gemv(buf["attn"], dense, x, bias=a.dense.bias, res=x)
            mlp_norm = getattr(layer, spec.mlp_norm).weight
            self.gemv(x, fc, buf["mlp"], norm=mlp_norm, bias=fc_bias, gated=mlp.gate is not None, act=self.act)
            self.gemv(buf["mlp"], proj, x, bias=mlp.proj.bias, res=x)
        logits = buf["logits"]
        self.gemv(x, Operands(model.lm_head.weight), logits, norm=t.ln_f.weight, bias=model.lm_head.bias)
        return logits[: spec.vocab_size]
