"""The one-token decode step as five fused Triton kernels per layer, captured as a CUDA graph per batch size.

Per layer (``decode_kernels``): norm + qkv GEMV; rotary + KV-cache write + grouped-query attention;
dense GEMV + residual add; norm + fc/gate GEMV + gated activation; proj GEMV + residual add. Then the
final norm + lm_head GEMV. That is ~5 kernels per layer instead of the ~14 that ``torch.compile`` makes of
``model.Transformer``, and it is what brings batch-1 decode near the memory-bandwidth bound
(docs/performance.md). Batches of 2-16 sequences (left-padded: each row has its own ``pad``) run the same
step with ``gemv_batch_kernel``, which reads each weight tile once for the whole batch. The weights, the KV
cache and the prefill are ``model.Transformer``'s own: only the one-token step is replaced, and
``tests/eval/test_fused_decode.py`` checks it against that model.

Covers the decoders of the support table's FUSED column (``ckptfmt.semantics``) on one rank or tensor
parallel (tp ranks, pp 1): each rank steps its own heads and columns, rank 0 alone adds the residual and the
row-parallel biases into the dense and proj outputs, and the sums over ranks are all-reduced in place (two
per layer, inside the captured graph: NCCL on GPUs), the vocab-split logits all-gathered. RMSNorm or
LayerNorm, pre-norm or OPT's post-norm, sequential or parallel residual (GPT-NeoX, Falcon), rotary, ALiBi or
learned positions (OPT's projected embeddings too), sliding windows, biases, gated or plain MLP, Gemma 1-3's
embedding scale, sandwich norms, logit caps and per-head q/k norms;
``unsupported`` names what else a model has, and the torch backend then uses ``torch.compile`` instead.
FP8 and INT8 SmoothQuant checkpoints run from their codes (``quantized.QuantWeight``: the GEMVs read e4m3 or
int8 weights, a byte each, and quantize their inputs as ``quantized.InputQuant`` does: dense's and proj's where
the attention and fc/gate kernels write them, ``producer_quant``), INT8/FP8 KV caches as ``quantized.KVQuant``
does (``tests/eval/test_fused_decode_quantized.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import cast

import torch

from ckptfmt.semantics import FUSED, support_rows

from .model import Block, KVCache, RMSNorm, Transformer
from .quantized import InputQuant, PackedLinear, PackedWeight, QuantWeight

# ``ModelSpec.activation`` -> the kernel's activation
KERNEL_ACTIVATIONS = {"silu": "silu", "relu": "relu", "gelu_erf": "gelu", "gelu_tanh": "gelu_tanh"}
MAX_BATCH = 16  # a CUDA graph per batch size up to here; larger batches go to the fallback
# what ``--compile`` ("auto") sends to the fused step: batch 1 (measured on an H100, docs/performance.md: 70 %
# of the bound). Batches of 2-16 go there only with compile="fused": with split-K, 3,200 tokens/s at batch 8
# (28 % of the bound) against torch.compile's ~5,000 (44 %), so they stay on torch.compile
AUTO_MAX_BATCH = 1
GEMMS = ("auto", "dot", "rows")  # how batches of 2-16 multiply (``batch_gemm``)
# split-K in ``gemv_batch_blocks``: measured on an H100 at batch 8, 2.6x the unsplit step end to end (1,240 ->
# 3,190-3,250 tokens/s for a TinyLlama shape); every split's output equal to the unsplit one's on the GPU
SPLIT_K = True
TUNABLE = ("BN", "BK", "num_warps", "num_stages", "PREFETCH", "SPLIT", "STATS_BK")  # ``FusedDecoder(batch_tuning=...)``


def unsupported(model: Transformer) -> str | None:
    """Why the fused step cannot run ``model`` (None when it can)."""
    spec, par = model.spec, model.par
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if par.mapping.pp_size > 1:
        return f"it runs tensor parallel only (this checkpoint has pp {par.mapping.pp_size})"
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


def gemv_blocks(k: int, codes: bool = False, gated: bool = False) -> dict:
    """Launch parameters of ``gemv_kernel`` for a weight of ``k`` columns: 4 rows x up to 1024 columns per
    step of a program, 8 warps (bench/fused_decode.py's sweep on an H100: within 4 % of the best found for
    TinyLlama-1.1B's qkv, dense, fc/gate and proj; docs/performance.md). One-byte ``codes`` (FP8, INT8
    SmoothQuant) take 16 rows (8 for a ``gated`` [fc; gate] pair): each code costs a conversion, and the input's
    normalization and quantization is shared by the program's rows, so 4 rows spent 8.7-14.4 instructions per
    weight byte, past what an H100 can issue at its copy rate (~11), against 5.6-5.8 for these
    (``bench/kernel_sass.py``, a static count; not yet timed on a GPU)."""
    rows = (8 if gated else 16) if codes else 4
    return {"BN": rows, "BK": min(1024, triton_next_pow2(k)), "num_warps": 8}


def batch_gemm(gemm: str, batch: int) -> bool:
    """Whether ``gemv_batch_kernel`` multiplies a batch on tensor cores (``tl.dot``, the batch padded to 16
    rows) rather than as multi-row GEMVs on the CUDA cores: "dot", "rows", or "auto": tensor cores from batch 8
    (on an H100 "dot" measured faster than "rows" at batch 8 and 16: docs/performance.md)."""
    return gemm == "dot" or (gemm == "auto" and batch >= 8)


def gemv_batch_blocks(n: int, k: int, batch: int, dot: bool, sms: int = 132, split_k: bool | None = None) -> dict:
    """Launch parameters of ``gemv_batch_kernel`` for a weight of ``n`` rows x ``k`` columns: the padded batch
    BB, a weight tile small enough that the [BB, BN, BK] products of the CUDA-core form stay in registers, and
    SPLIT. With ``split_k`` (default ``SPLIT_K``) the K columns are split over up to 8 programs per row tile
    while there are fewer than two programs per SM (``sms``) and each split keeps at least two BK tiles;
    otherwise SPLIT is 1 (docs/performance.md)."""
    if dot:
        blocks = {"BB": max(16, triton_next_pow2(batch)), "BN": 32, "BK": max(16, min(128, triton_next_pow2(k))),
                  "num_warps": 4}  # fmt: skip
    else:
        bb = triton_next_pow2(batch)
        blocks = {"BB": bb, "BN": 4, "BK": min(triton_next_pow2(k), 4096 // bb), "num_warps": 4}
    tiles, split, most = math.ceil(n / blocks["BN"]), 1, 8 if (SPLIT_K if split_k is None else split_k) else 1
    while split < most and tiles * split < 2 * sms and k >= 4 * blocks["BK"] * split:
        split *= 2
    return blocks | {"SPLIT": split}


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

    w: torch.Tensor | None  # None: ``packed``
    ws: torch.Tensor | None = None
    xs: torch.Tensor | None = None
    pre: torch.Tensor | None = None
    flags: dict | None = None
    packed: list[PackedWeight] | None = None  # weight-only / AWQ codes (``decode_wq_kernels``): [W] or [fc, gate]


def operands(linears: list, codes: QuantWeight | None, stacked: torch.Tensor | None = None) -> Operands:
    """``Operands`` of a linear (``linears``: [fc, gate] for the stacked fc/gate, whose float weight is ``stacked``
    when ``MLP.fuse`` made one): its float weight, or where it is quantized (``quantized.attach``) its ``codes``
    (``QuantWeight``) and its input's quantization, or a ``PackedLinear``'s codes (never its dequantized weight)."""
    if isinstance(linears[0], PackedLinear):
        return Operands(None, packed=[m.packed_weight for m in linears])
    float_weight = cast(torch.Tensor, stacked if stacked is not None else linears[0].weight)
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


def producer_quant(op: Operands) -> tuple[Operands, dict | None]:
    """A linear whose input quantization its producer can do instead (FP8 or INT8 per tensor: elementwise,
    with one scale): its operands without it, and the producer kernel's ``OAQ`` arguments, which store the
    input as the linear quantizes it, once, where each of the linear's programs would otherwise quantize the
    whole input again. The values are the same bit for bit. Per-token scales (a row's maximum) stay with the
    linear; so does anything else: (op, None)."""
    flags = op.flags or {}
    if flags.get("AQ") not in ("fp8", "int8") or flags.get("SPLIT_ACT") or op.xs is None:
        return op, None
    quant = dict(OXS=op.xs, OPRE=op.pre if op.pre is not None else op.xs, OAQ=flags["AQ"], OHAS_PRE=flags["HAS_PRE"])
    return replace(op, flags=flags | {"AQ": "none", "HAS_PRE": False}), quant


@dataclass
class Norm:
    """A norm the GEMVs apply to their input: RMSNorm (``bias`` None) or LayerNorm (``bias``: zeros where it
    has none)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @staticmethod
    def of(module: torch.nn.Module) -> Norm:
        weight = cast(torch.Tensor, module.weight)
        if isinstance(module, RMSNorm):
            return Norm(weight, None)
        bias = cast(torch.Tensor | None, module.bias)
        return Norm(weight, bias if bias is not None else torch.zeros_like(weight))


@dataclass
class LayerOps:
    """What one layer's kernels read besides the activations: the four linears, the stacked fc/gate bias,
    the norms (``mlp_norm`` None: the MLP reads the attention norm's output; ``attn_out_norm`` /
    ``mlp_out_norm``: Gemma 2's norms on the attention and MLP outputs), the attention window, and the rotary
    frequencies (Gemma 3's local layers have their own) and q/k norm weights (Gemma 3) the attention reads."""

    qkv: Operands
    dense: Operands
    fc: Operands
    proj: Operands
    fc_bias: torch.Tensor | None
    attn_norm: Norm
    mlp_norm: Norm | None
    window: int | None
    attn_out_norm: Norm | None = None
    mlp_out_norm: Norm | None = None
    softcap: float = 0.0  # Gemma 2's attention logit cap (0: none)
    inv_freq: torch.Tensor | None = None  # None: no rotary
    qk_norm: tuple[torch.Tensor, torch.Tensor] | None = None  # RMSNorm weights of each q and k head
    attn_out_quant: dict | None = None  # the attention's output stored as dense quantizes it (``producer_quant``)
    mlp_out_quant: dict | None = None  # the fc GEMV's output stored as proj quantizes it


@dataclass
class CapturedStep:
    """A captured step and every buffer its kernels read or write (they must outlive the graph)."""

    cache: tuple  # address and shape of the KV cache it was captured with
    graph: torch.cuda.CUDAGraph
    buffers: dict
    logits: torch.Tensor


class FusedDecoder:
    """Callable like ``Transformer.forward`` for one-token steps: ``(tokens [b, 1], slots [1], pad [b])`` ->
    float32 logits [b, 1, vocab]. On CUDA the step is captured once per batch size as a CUDA graph (again
    when the KV cache is reallocated) and replayed; batches over ``max_batch`` (at most ``MAX_BATCH``) go to
    ``fallback``. ``gemm``: how batches of 2-16 multiply (``batch_gemm``); ``batch_tuning``: launch options of
    ``gemv_batch_kernel`` over ``gemv_batch_blocks``' own (``TUNABLE``), for
    ``bench/fused_decode.py --batch``'s candidates; ``split_k``: the split-K rule on or off (default ``SPLIT_K``);
    ``quant_at_producer``: FP8 / INT8 dense and proj inputs quantized by the kernel that writes them
    (``producer_quant``; off: by every program of the GEMV that reads them, for benches and tests); ``tuning``:
    launch options of the one-row ``gemv_kernel`` (BN, BK, num_warps) over ``gemv_blocks``' own, for benches."""

    def __init__(
        self,
        model: Transformer,
        fallback=None,
        cuda_graphs: bool = True,
        gemm: str = "auto",
        max_batch: int = MAX_BATCH,
        batch_tuning: dict | None = None,
        split_k: bool | None = None,
        quant_at_producer: bool = True,
        tuning: dict | None = None,
    ):
        reason = unsupported(model)
        if reason:
            raise ValueError(f"fused decode: {reason}")
        if gemm not in GEMMS:
            raise ValueError(f"fused decode: gemm must be one of {GEMMS}, got {gemm!r}")
        from . import decode_kernels

        self.kernels = decode_kernels
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"fused decode: max_batch must be 1 to {MAX_BATCH}, got {max_batch}")
        self.model, self.fallback, self.gemm, self.max_batch = model, fallback, gemm, max_batch
        unknown = set(batch_tuning or {}) - set(TUNABLE)
        if unknown:
            raise ValueError(f"fused decode: batch_tuning takes {', '.join(TUNABLE)}: {unknown}")
        self.batch_tuning, self.split_k = dict(batch_tuning or {}), split_k
        self.quant_at_producer = quant_at_producer
        self.tuning = dict(tuning or {})
        if set(self.tuning) - {"BN", "BK", "num_warps"}:
            raise ValueError(f"fused decode: tuning takes BN, BK, num_warps: {set(self.tuning)}")
        spec = model.spec
        self.act = KERNEL_ACTIVATIONS[spec.activation]
        self.eps = spec.norm_epsilon
        # Gemma's embedding scale, rounded to the model dtype as the torch backend's (``Transformer.embed``)
        p = next(model.parameters())
        self.embedding_scale = float(torch.tensor(spec.embedding_scale, dtype=p.dtype))
        self.final_cap = spec.final_logit_softcapping  # Gemma 2's cap on the logits
        self.par = model.par
        self.lead = model.par.tp_rank == 0  # adds the residual and row-parallel biases (once, before the sum)
        self.layers = [self.layer_ops(layer) for layer in model.transformer.blocks()]
        if not all(p.is_contiguous() for p in model.parameters()):
            raise ValueError("fused decode: the kernels read contiguous weights")
        t = model.transformer
        self.final_norm = Norm.of(t.ln_f) if spec.has_ln_f else None
        self.alibi = model.alibi.to(p.device) if model.alibi is not None else None
        first = t.blocks()[0].attention
        self.heads, self.kv_heads, self.head_size = first.heads, first.kv_heads, first.head_size
        self.rotary_dim = spec.rotary_dim if model.rotary is not None else 0
        self.cuda_graphs = cuda_graphs and p.device.type == "cuda"
        self.pdl = use_pdl(p.device)
        self.sms = torch.cuda.get_device_properties(p.device).multi_processor_count if p.device.type == "cuda" else 132
        self.graphs: dict[int, CapturedStep] = {}  # per batch size
        self.split_space: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per batch size: split-K partials

    def layer_ops(self, layer: Block) -> LayerOps:
        spec = self.model.spec
        a, mlp = layer.attention, layer.mlp
        rotary = self.model.layer_rotary(layer.local)
        quantized = getattr(a.qkv, "input_quant", None) is not None
        if mlp.gate is not None and mlp.fc_gate is None and not quantized:
            mlp.fuse()  # [fc; gate] as one weight: one GEMV reads both (load_model has done it)
        fc = [mlp.fc, mlp.gate] if mlp.gate is not None else [mlp.fc]
        fc_bias: torch.Tensor | None = mlp.fc.bias
        if mlp.gate is not None and mlp.fc.bias is not None:  # [fc; gate] (fuse() stacked the float path's)
            fc_bias = mlp.fc_gate_bias if mlp.fc_gate is not None else torch.cat([mlp.fc.bias, mlp.gate.bias])
        dense = operands([a.dense], getattr(a.dense, "quant_weight", None))
        fc_op = operands(fc, getattr(mlp, "quant_fc_gate", getattr(mlp.fc, "quant_weight", None)), mlp.fc_gate)
        proj = operands([mlp.proj], getattr(mlp.proj, "quant_weight", None))
        attn_quant = mlp_quant = None
        if self.quant_at_producer:
            dense, attn_quant = producer_quant(dense)
            if fc_op.packed is None:  # the packed GEMVs store plain outputs
                proj, mlp_quant = producer_quant(proj)
        return LayerOps(
            operands([a.qkv], getattr(a.qkv, "quant_weight", None)),
            dense,
            fc_op,
            proj,
            fc_bias,
            Norm.of(getattr(layer, spec.attn_norm)),
            Norm.of(getattr(layer, spec.mlp_norm)) if spec.mlp_norm else None,
            self.model.window if layer.local else None,
            Norm.of(getattr(layer, spec.attn_out_norm)) if spec.attn_out_norm else None,
            Norm.of(getattr(layer, spec.mlp_out_norm)) if spec.mlp_out_norm else None,
            float(a.softcap or 0.0),
            rotary.inv_freq if rotary is not None else None,
            (Norm.of(a.q_layernorm).weight, Norm.of(a.k_layernorm).weight) if spec.qk_norm else None,
            attn_quant,
            mlp_quant,
        )

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, last_only: bool = True):
        b = inputs.shape[0]
        if inputs.shape[1] != 1 or (b > self.max_batch and self.fallback is None):
            shape = tuple(inputs.shape)
            raise ValueError(f"fused decode takes one token of at most {self.max_batch} sequences, got {shape}")
        if b > self.max_batch:
            return self.fallback(inputs, slots, pad, last_only=last_only)
        if not self.cuda_graphs:
            tokens = inputs.reshape(b).contiguous()  # the kernels read it as a vector
            return self.step(tokens, slots.reshape(1), pad.contiguous(), self.buffers(b)).unsqueeze(1)
        kv = self.cache().kv
        key = (kv.data_ptr(), tuple(kv.shape))
        self.graphs = {n: g for n, g in self.graphs.items() if g.cache == key}  # memory back before a capture
        if b not in self.graphs:
            self.graphs[b] = self.capture(inputs, slots, pad, key)
        g = self.graphs[b]
        g.buffers["tokens"].copy_(inputs.view(b))
        g.buffers["slot"].copy_(slots.view(1))
        g.buffers["pad"].copy_(pad)
        g.graph.replay()
        return g.logits.unsqueeze(1)

    def capture(self, inputs, slots, pad, key: tuple) -> CapturedStep:
        """Warm the kernels up (triton compiles at first launch) on a side stream, then capture one step."""
        buffers = self.buffers(inputs.shape[0])
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
        return CapturedStep(key, graph, buffers, logits)

    def cache(self) -> KVCache:
        """The first layer's KV cache (``setup_cache`` has allocated it)."""
        cache = cast(Block, self.model.transformer.layers[0]).attention.kv_cache
        assert cache is not None, "setup_cache allocates the KV caches"
        return cache

    def buffers(self, b: int) -> dict:
        """The step's activations for a batch of ``b``."""
        model, spec = self.model, self.model.spec
        p = next(model.parameters())
        layer = model.transformer.blocks()[0]
        splits = attention_blocks(self.cache().length)["SPLITS"]  # attention partials
        empty = lambda *n, dtype=p.dtype: torch.empty(*n, dtype=dtype, device=p.device)  # noqa: E731
        return {
            "x": empty(b, spec.hidden_size),
            "small": empty(b, spec.embed_proj_dim or 1),  # OPT's embedding before project_in / after project_out
            "qkv": empty(b, layer.attention.qkv.out_features),
            "attn": empty(b, self.heads * self.head_size),
            "mlp": empty(b, layer.mlp.fc.out_features),
            "out": empty(b, spec.hidden_size),  # a sublayer's output before its own norm (Gemma 2)
            "logits": empty(b, model.lm_head.weight.shape[0], dtype=torch.float32),
            "parts": empty(b * self.heads * splits * (triton_next_pow2(self.head_size) + 2), dtype=torch.float32),
        }

    def gemv(
        self, x, op: Operands, y, *, norm: Norm | None = None, bias=None, res=None, gated=False, act="none",
        out_quant: dict | None = None,
    ):  # fmt: skip
        """``y = act(W @ norm(x) + bias) (+ res)`` for each row of ``x`` (gated: W holds [fc; gate]): one
        ``gemv_kernel`` for one row, one ``gemv_batch_kernel`` for several; W and the input's quantization
        from ``op``; ``out_quant``: y stored quantized as the next linear's input (``producer_quant``)."""
        if op.packed is not None:  # weight-only / AWQ codes: RMSNorm only (``unsupported``)
            assert out_quant is None, "the packed GEMVs store plain outputs (layer_ops)"
            from .decode_wq_kernels import packed_gemv, packed_gemv_batch

            norm_w = None if norm is None else norm.weight
            run = packed_gemv if x.shape[0] == 1 else packed_gemv_batch  # the batch: codes read once for all rows
            xs, ys, rs = (x[0], y[0], None if res is None else res[0]) if x.shape[0] == 1 else (x, y, res)
            run(xs, op.packed, ys, eps=self.eps, norm=norm_w, bias=bias, res=rs, act=act, pdl=self.pdl)
            return
        w, b = op.w, x.shape[0]
        assert w is not None, "a float or code weight where no packed one"
        n, k = w.shape[0] // (2 if gated else 1), w.shape[1]
        flags = dict(
            HAS_NORM=norm is not None, LAYER=norm is not None and norm.bias is not None, HAS_BIAS=bias is not None,
            HAS_RES=res is not None, GATED=gated, ACT=act, PDL=self.pdl, **(op.flags or {}), **(out_quant or {}),
        )  # fmt: skip
        args = (
            x, w if norm is None else norm.weight, w, w if bias is None else bias, y, y if res is None else res,
            w if op.ws is None else op.ws, w if op.xs is None else op.xs, w if op.pre is None else op.pre, n, k,
            self.eps,
        )  # fmt: skip
        nbias = w if norm is None or norm.bias is None else norm.bias
        pdl = {"launch_pdl": True} if self.pdl else {}
        if b == 1:
            blocks = gemv_blocks(k, w.element_size() == 1, gated) | self.tuning
            grid = (math.ceil(n / blocks["BN"]),)
            self.kernels.gemv_kernel[grid](*args, NBIAS=nbias, **flags, **blocks, **pdl)
            return
        dot = batch_gemm(self.gemm, b)
        blocks = gemv_batch_blocks(n, k, b, dot, self.sms, self.split_k) | self.batch_tuning
        precision = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32: unused by half-precision inputs
        tiles, split = math.ceil(n / blocks["BN"]), blocks["SPLIT"]
        part, count = self.partials(b, split * 2 * blocks["BB"] * n, tiles) if split > 1 else (y, y)
        self.kernels.gemv_batch_kernel[(tiles, split)](
            *args, NBIAS=nbias, B=b, DOT=dot, PRECISION=precision, PART=part, COUNT=count, **flags, **blocks, **pdl
        )

    def partials(self, b: int, size: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The split-K workspace of batch size ``b``: float32 partial sums and int32 counts per row tile (zero
        between launches: the kernel sets them back). Grown on the step's first run, which precedes its
        capture, so a captured graph's workspace is never replaced; one per batch size, as the graphs are."""
        held = self.split_space.get(b)
        if held is None or held[0].numel() < size or held[1].numel() < tiles:
            device = next(self.model.parameters()).device
            size, tiles = max(size, held[0].numel() if held else 0), max(tiles, held[1].numel() if held else 0)
            held = torch.empty(size, dtype=torch.float32, device=device), torch.zeros(tiles, dtype=torch.int32,
                                                                                       device=device)  # fmt: skip
            self.split_space[b] = held
        return held

    def attention(self, layer: Block, ops: LayerOps, buf: dict, slot, pad) -> None:
        """Rotary (or ALiBi), the cache write at ``slot`` and attention over each row's cache: one
        ``decode_attention_kernel``, plus ``attention_combine_kernel`` where the cache is long enough to be
        split."""
        a, qkv, out, parts = layer.attention, buf["qkv"], buf["attn"], buf["parts"]
        assert a.kv_cache is not None, "setup_cache allocates the KV caches"
        kv, b = a.kv_cache.kv, qkv.shape[0]
        qk_norm = {}
        if ops.qk_norm is not None:  # Gemma 3: RMSNorm per head
            qk_norm = {"QNORM": ops.qk_norm[0], "KNORM": ops.qk_norm[1], "eps": self.eps, "QK_NORM": True}
        kv_quant = {} if a.kv_quant is None else {"KV_SCALE": a.kv_quant.scale, "KVQ": a.kv_quant.kind}
        pdl = {"launch_pdl": True} if self.pdl else {}
        out_quant = ops.attn_out_quant or {}  # dense's input quantization
        blocks = attention_blocks(kv.shape[3])
        splits, chunk = blocks.pop("SPLITS"), blocks.pop("CHUNK")
        bd = triton_next_pow2(self.head_size)
        window = ops.window or kv.shape[3] + 1
        self.kernels.decode_attention_kernel[(self.heads, splits, b)](
            qkv, kv, out, ops.inv_freq if ops.inv_freq is not None else qkv, slot, pad, parts,
            self.alibi if self.alibi is not None else qkv, chunk, window, kv.stride(0), kv.stride(1), kv.stride(2),
            HEADS=self.heads, KV_HEADS=self.kv_heads, D=self.head_size, BD=bd, ROT=self.rotary_dim,
            INTERLEAVED=self.model.spec.rotary_interleaved, SPLITS=splits, SCALE=a.scale, PDL=self.pdl,
            HAS_ALIBI=self.alibi is not None, SOFTCAP=ops.softcap, **qk_norm, **kv_quant, **blocks, **pdl,
            **({} if splits > 1 else out_quant),
        )  # fmt: skip
        if splits > 1:
            self.kernels.attention_combine_kernel[(self.heads, b)](
                parts, out, HEADS=self.heads, D=self.head_size, BD=bd, SPLITS=splits, PDL=self.pdl,
                num_warps=1, **out_quant, **pdl,
            )  # fmt: skip

    def embed(self, tokens: torch.Tensor, slot, pad, buf: dict) -> None:
        """``buf["x"]``: the embeddings of ``tokens`` (times Gemma's scale; OPT's through project_in), plus the
        learned positions where the model has them."""
        t, spec = self.model.transformer, self.model.spec
        x, small = buf["x"], buf["small"]
        if self.par.tp_size > 1 and t.vocab_embedding.split != "none":  # split table: the model's lookup + sum
            positions = (slot.view(1, 1) - pad.view(-1, 1)).clamp(min=0)
            x.copy_(self.model.embed(tokens.view(-1, 1), positions).view(x.shape))
            return
        table = t.vocab_embedding.weight
        positions = t.position_embedding.weight if spec.learned_positions else table
        scaled = spec.embedding_scale != 1

        def launch(out: torch.Tensor, lookup: bool, pos: bool) -> None:
            h = out.shape[1]
            self.kernels.embed_kernel[(out.shape[0],)](
                tokens, table, positions, out, slot, pad, self.embedding_scale, h, BH=triton_next_pow2(h),
                LOOKUP=lookup, HAS_SCALE=scaled and lookup, HAS_POS=pos, num_warps=4,
            )  # fmt: skip

        if spec.embed_proj_dim:
            launch(small, True, False)
            self.gemv(small, Operands(t.project_in.weight), x)
            if spec.learned_positions:
                launch(x, False, True)
        else:
            launch(x, True, spec.learned_positions)

    def norm(self, x: torch.Tensor, norm: Norm | None, res: torch.Tensor | None = None) -> None:
        """``x`` normalized in place, row by row (OPT's post-norm), or ``res += norm(x)`` (Gemma 2)."""
        assert norm is not None  # post-norm layers have both norms
        k = x.shape[1]
        self.kernels.norm_kernel[(x.shape[0],)](
            x, norm.weight, norm.weight if norm.bias is None else norm.bias, k, self.eps, BK=triton_next_pow2(k),
            LAYER=norm.bias is not None, RES=x if res is None else res, HAS_RES=res is not None, num_warps=4,
        )  # fmt: skip

    def layer(self, layer: Block, ops: LayerOps, slot, pad, buf: dict) -> None:
        """One decoder layer on ``buf["x"]``, in the order ``model.Block`` adds and normalizes."""
        spec, x, mlp = self.model.spec, buf["x"], layer.mlp
        pre, parallel = spec.pre_norm, spec.parallel_residual

        def mlp_in(norm: Norm | None) -> None:
            gated = mlp.gate is not None
            self.gemv(x, ops.fc, buf["mlp"], norm=norm, bias=ops.fc_bias, gated=gated, act=self.act,
                      out_quant=ops.mlp_out_quant)  # fmt: skip

        self.gemv(x, ops.qkv, buf["qkv"], norm=ops.attn_norm if pre else None, bias=layer.attention.qkv.bias)
        self.attention(layer, ops, buf, slot, pad)
        if pre and parallel:  # the MLP reads x before the attention's residual add: x + attn + mlp
            mlp_in(ops.mlp_norm or ops.attn_norm)
        self.row_parallel(buf["attn"], ops.dense, x, layer.attention.dense.bias, ops.attn_out_norm, buf["out"])
        if not pre:  # OPT post-norm: normalize after each residual add
            self.norm(x, ops.attn_norm)
            mlp_in(None)
        elif not parallel:
            mlp_in(ops.mlp_norm)
        self.row_parallel(buf["mlp"], ops.proj, x, mlp.proj.bias, ops.mlp_out_norm, buf["out"])
        if not pre:
            self.norm(x, ops.mlp_norm)

    def row_parallel(self, inputs: torch.Tensor, op: Operands, x: torch.Tensor, bias, out_norm=None, out=None) -> None:
        """``x += W @ inputs + bias`` for a row-parallel W (dense, proj): each rank's partial product, the
        residual and bias from tp rank 0 only, then the sum over ranks in place (no-op on one rank). With
        ``out_norm`` (Gemma 2): ``x += out_norm(W @ inputs + bias)``, the product summed in ``out`` first."""
        lead = self.lead
        if out_norm is None:
            self.gemv(inputs, op, x, bias=bias if lead else None, res=x if lead else None)
            self.par.all_reduce(x)
            return
        self.gemv(inputs, op, out, bias=bias if lead else None)
        self.par.all_reduce(out)
        self.norm(out, out_norm, res=x)

    def step(self, tokens: torch.Tensor, slot: torch.Tensor, pad: torch.Tensor, buf: dict) -> torch.Tensor:
        """Launch the kernels of one step; returns the logits [b, vocab] (float32, a view of the buffer)."""
        model, spec = self.model, self.model.spec
        t = model.transformer
        self.embed(tokens, slot, pad, buf)
        for layer, ops in zip(t.blocks(), self.layers, strict=True):
            self.layer(layer, ops, slot, pad, buf)
        x, final = buf["x"], self.final_norm
        if spec.embed_proj_dim:
            self.gemv(x, Operands(t.project_out.weight), buf["small"], norm=final)
            x, final = buf["small"], None
        logits = buf["logits"]
        self.gemv(x, Operands(model.lm_head.weight), logits, norm=final, bias=model.lm_head.bias)
        logits = self.par.all_gather(logits, dim=-1)[:, : spec.vocab_size]  # vocab rows of every tp rank
        cap = self.final_cap
        if cap:  # Gemma 2, as the torch backend's head: on the logits in the model dtype (they hold its values)
            logits = (torch.tanh(logits.to(x.dtype) / cap) * cap).float()
        return logits
