"""The one decoder network definition, for every architecture and every rank, over the ``Ops`` interface.

Architectures differ only through ``ModelSpec`` fields (norm kind, gated MLP, biases, rotary layout and
width, learned positions, parallel residual, OPT post-norm and projections, GQA; Gemma's embedding scale,
norms on the attention and MLP outputs, per-head q/k norms, attention scale, soft-capped scores and logits,
sliding window on local layers with their own rotary base). Tensor parallelism:
column-parallel q/k/v, fc, gate and lm_head; row-parallel dense and proj followed by an all-reduce, their
bias added once after it; the vocab-split lm_head is all-gathered. Pipeline stages take and return hidden
states.
"""

from __future__ import annotations

import numpy as np

from ckptfmt.constants import DTYPES
from ckptfmt.engine import (
    HIDDEN_IN,
    HIDDEN_OUT,
    INPUT_IDS,
    KEY_IN,
    KEY_OUT,
    LAST_TOKEN_INDEX,
    LOGITS,
    POSITION_IDS,
    VALUE_IN,
    VALUE_OUT,
)
from ckptfmt.names import DENSE, FC, GATE, K_NORM, PROJ, Q_NORM, QKV
from ckptfmt.semantics import alibi_slopes

from .contract import RankLayout, stage_io
from .ops import Ops, Tensor
from .weights import Linear, RankWeights, rope_tables

F32 = "float32"


def define_rank_network(ops: Ops, layout: RankLayout, weights: RankWeights) -> None:
    """Declare one rank's inputs, layers and outputs on ``ops``."""
    io = stage_io(layout.config, layout.pp_rank, layout.build)
    positions = ops.input(io.tensor(POSITION_IDS))
    if layout.first_stage:
        with ops.scope("embedding"):
            h = embed(ops, layout, weights, ops.input(io.tensor(INPUT_IDS)), positions)
    else:
        h = ops.input(io.tensor(HIDDEN_IN))
    with ops.scope("step"):
        ctx = _StepContext(ops, layout, positions)
    for local, layer in enumerate(layout.layers):
        caches = [ops.input(io.tensor(t.format(layer=layer))) for t in (KEY_IN, VALUE_IN)]
        with ops.scope(f"layers.{layer}"):
            h, present = decoder_layer(ctx, weights, local, h, caches)
        for name, tensor in zip((KEY_OUT, VALUE_OUT), present):
            ops.output(io.tensor(name.format(layer=layer)), tensor)
    if layout.last_stage:
        with ops.scope("logits"):
            if layout.build.gather_last_token_logits:
                last = ops.gather_batched(h, ops.input(io.tensor(LAST_TOKEN_INDEX)))  # [B, H]
                out = ops.reshape(logits(ops, layout, weights, ops.reshape(last, (0, 1, -1))), (0, -1))
            else:
                out = logits(ops, layout, weights, h)
        ops.output(io.tensor(LOGITS), out)
    else:
        ops.output(io.tensor(HIDDEN_OUT), h)


def alibi_bias(layout: RankLayout) -> np.ndarray:
    """float32 ``[1, kv_heads, group, 1, max_seq_len]``: this rank's query heads' slope x key position (a key's
    slot is its position), rounded to the model dtype as the torch backend's ``alibi_bias``; the head axis
    split as ``explicit_attention`` folds query heads into their kv head."""
    nq, nkv, smax = layout.heads, layout.kv_heads, layout.build.max_seq_len
    slopes = alibi_slopes(layout.spec)[layout.tp_rank * nq : (layout.tp_rank + 1) * nq]
    bias = slopes[:, None] * np.arange(smax, dtype=np.float32)[None, :]
    return bias.astype(DTYPES[layout.dtype]).astype(np.float32).reshape(1, nkv, nq // nkv, 1, smax)


class _StepContext:
    """Per-step tensors the layers share: positions, KV write index, rope tables (and each layer's mask)."""

    def __init__(self, ops: Ops, layout: RankLayout, positions: Tensor):
        self.ops, self.layout, self.positions = ops, layout, positions
        self.last_visible = ops.add(ops.reshape(positions, (0, 1, -1, 1)), ops.scalar(1, "int32", 4))  # [B, 1, S, 1]
        self.write_index = ops.gather(positions, ops.constant("zero_index", np.array(0, dtype=np.int32)), axis=1)
        self._ropes: dict[bool, tuple[Tensor, Tensor]] = {}  # global / local layers (Gemma 3: own base)
        for local in range(len(layout.layers)) if layout.spec.rotary else ():
            own = self._own_rope(local)
            if own not in self._ropes:
                cos, sin = rope_tables(layout, layout.layers[local])
                key = ".local" if own else ""
                self._ropes[own] = (ops.constant("rope_cos" + key, cos), ops.constant("rope_sin" + key, sin))
        alibi = layout.spec.position_embedding_type.startswith("alibi")
        self.alibi = ops.constant("alibi_bias", alibi_bias(layout)) if alibi else None

    def _own_rope(self, local: int) -> bool:
        """Whether stage layer ``local`` is a local layer with a rotary base of its own."""
        spec = self.layout.spec
        return spec.rotary_base_local is not None and spec.local_layer(self.layout.layers[local])

    def rope(self, local: int) -> tuple[Tensor, Tensor] | None:
        """cos/sin tables of stage layer ``local`` (None without a rotary embedding)."""
        return self._ropes.get(self._own_rope(local))

    def mask(self, local: int) -> Tensor:
        """Bool ``[B, 1, S, max_seq_len]``: slot <= position, as ``slot + l < position + 1 + l`` for layer ``l``;
        in a sliding-window layer also slot > position - window, as ``position + l - window < slot + l``.

        One mask tensor per layer, made distinct by the offset: TensorRT-RTX 1.7's compiler fails ("Graph
        contains more than one op named ..._iota") when one mask feeds several attention layers at batch 1 and
        inputs of 2..16 tokens, and it merges identical masks back into one.
        """
        ops, smax = self.ops, self.layout.build.max_seq_len
        slots = ops.constant(f"key_slots.{local}", np.arange(local, smax + local, dtype=np.int32).reshape(1, 1, 1, -1))
        visible = self.last_visible if local == 0 else ops.add(self.last_visible, ops.scalar(local, "int32", 4))
        causal = ops.less(slots, visible)
        window = self.layout.spec.layer_window(self.layout.layers[local])
        if window is None:
            return causal
        first = ops.add(self.last_visible, ops.scalar(local - window - 1, "int32", 4))  # position + l - window
        return ops.logical_and(causal, ops.less(first, slots))


def embed(ops: Ops, layout: RankLayout, w: RankWeights, ids: Tensor, positions: Tensor) -> Tensor:
    spec = layout.spec
    h = embedding_lookup(ops, layout, "vocab_embedding", w.vocab_embedding(), ids, spec.vocab_size)
    if spec.embedding_scale != 1:  # Gemma: x sqrt(hidden_size), the factor rounded to the model dtype
        h = ops.mul(h, ops.scalar(spec.embedding_scale, layout.dtype, 3))
    proj = w.project_in()
    if proj is not None:
        h = ops.matmul(h, ops.constant("project_in", proj.reshape(1, *proj.shape)), transpose_b=True)
    if spec.learned_positions:
        table = w.position_embedding()
        h = ops.add(
            h,
            embedding_lookup(
                ops, layout, "position_embedding", table, positions, spec.max_position_embeddings or table.shape[0]
            ),
        )
    return h


def embedding_lookup(ops: Ops, layout: RankLayout, key: str, table, ids: Tensor, rows: int) -> Tensor:
    """Gather rows of a replicated or tensor-parallel (split on rows or on width) embedding table."""
    tp = layout.tp_size
    const = ops.constant(key, table)
    if tp == 1 or (table.shape[0] >= rows and not _split_width(layout)):
        return ops.gather(const, ids, axis=0)
    if _split_width(layout):  # [rows, width / tp] on each rank: gather, then concatenate the widths
        part = ops.transpose(ops.gather(const, ids, axis=0), (2, 0, 1))  # [W/tp, B, S]
        return ops.transpose(ops.all_gather(part), (1, 2, 0))
    per_rank = table.shape[0]
    local = ops.sub(ids, ops.scalar(layout.tp_rank * per_rank, "int32", 2))
    inside = ops.logical_and(
        ops.less(ops.scalar(-1, "int32", 2), local), ops.less(local, ops.scalar(per_rank, "int32", 2))
    )
    rows_here = ops.gather(const, ops.where(inside, local, ops.scalar(0, "int32", 2)), axis=0)
    keep = ops.cast(ops.reshape(inside, (0, 0, 1)), layout.dtype)
    return ops.all_reduce(ops.mul(rows_here, keep))


def _split_width(layout: RankLayout) -> bool:
    return layout.config.use_parallel_embedding and layout.config.embedding_sharding_dim == 1 and layout.tp_size > 1


def linear(ops: Ops, layout: RankLayout, x: Tensor, lin: Linear, reduce: bool = False) -> Tensor:
    """``x @ W.T + b`` for x ``[B, S, in]``; row-parallel (``reduce``) all-reduces before the bias."""
    if lin.quantized is not None:
        y = quantized_matmul(ops, layout, x, lin)
    elif lin.precision is None:
        y = ops.matmul(x, ops.constant(lin.key + ".weight", lin.weight.reshape(1, *lin.weight.shape)), transpose_b=True)
    else:
        assert lin.scale is not None  # weight-only linears carry their scales
        if lin.prequant is not None:  # INT4 AWQ: (x * s) @ W == x @ (diag(s) W)
            x = ops.mul(x, ops.constant(lin.key + ".prequant", lin.prequant.reshape(1, 1, -1)))
        k, n = lin.in_features, lin.out_features
        q = ops.constant(lin.key + ".weight", lin.weight, dtype=lin.precision, shape=(1, k, n))
        if lin.group_size:
            scale = ops.constant(lin.key + ".scale", lin.scale.reshape(1, *lin.scale.shape))
            w = ops.dequantize(q, scale, layout.dtype)
        else:
            w = ops.dequantize(q, ops.constant(lin.key + ".scale", lin.scale), layout.dtype, axis=2)
        y = ops.matmul(x, w)
    if reduce and layout.tp_size > 1:
        y = ops.all_reduce(y)
    if lin.bias is not None:
        y = ops.add(y, ops.constant(lin.key + ".bias", lin.bias.reshape(1, 1, -1)))
    return y


def fake_quant(ops: Ops, layout: RankLayout, x: Tensor, key: str, scale: np.ndarray, codes: str) -> Tensor:
    """``x`` quantized to ``codes`` (fp8, int8) with the per-tensor float32 ``scale`` and dequantized: Q/DQ in
    float32 like the torch backend (ckpt_eval.quantized.fake_quant), the result in the model dtype."""
    s = ops.constant(key, scale.astype(np.float32).reshape(()))
    x32 = ops.cast(x, F32) if layout.dtype != F32 else x
    y = ops.dequantize(ops.quantize(x32, s, codes), s, F32)
    return ops.cast(y, layout.dtype) if layout.dtype != F32 else y


def per_token_fake_quant(ops: Ops, layout: RankLayout, x: Tensor) -> Tensor:
    """``x`` quantized to int8 with each row's own scale (its largest magnitude / 127; 1 for a row of zeros) and
    dequantized, in float32 like the torch backend (ckpt_eval.quantized.per_token_scale): a scale computed from
    the input is no constant IQuantizeLayer takes, so the rounding and clamping are elementwise layers."""
    x32 = ops.cast(x, F32) if layout.dtype != F32 else x
    rank = len(x32.shape)
    scale = ops.div(ops.reduce_max_last(ops.unary(x32, "abs")), ops.scalar(127.0, F32, rank))
    scale = ops.where(ops.less(ops.scalar(0.0, F32, rank), scale), scale, ops.scalar(1.0, F32, rank))
    q = ops.unary(ops.div(x32, scale), "round")
    q = ops.minimum(ops.maximum(q, ops.scalar(-128.0, F32, rank)), ops.scalar(127.0, F32, rank))
    y = ops.mul(q, scale)
    return ops.cast(y, layout.dtype) if layout.dtype != F32 else y


def quantized_matmul(ops: Ops, layout: RankLayout, x: Tensor, lin: Linear) -> Tensor:
    """FP8 / INT8 SmoothQuant: ``fq(x * prequant) @ dq(W).T`` (weights dequantized in float32, then the model
    dtype: what the torch backend loads), times ``out_scale``."""
    qz = lin.quantized
    assert qz is not None
    if qz.prequant is not None:
        x = ops.mul(x, ops.constant(lin.key + ".prequant", qz.prequant.reshape(1, 1, -1)))
    if qz.per_token:
        x = per_token_fake_quant(ops, layout, x)
    else:
        x = fake_quant(ops, layout, x, lin.key + ".input_scale", qz.input_scale, qz.dtype)
    q = ops.constant(lin.key + ".weight", lin.weight, dtype=qz.dtype, shape=(1, *lin.weight.shape))
    per_tensor = qz.weight_scale.size == 1
    scale = ops.constant(lin.key + ".scale", qz.weight_scale.reshape(()) if per_tensor else qz.weight_scale)
    w = ops.dequantize(q, scale, F32, axis=None if per_tensor else 1)
    w = ops.cast(w, layout.dtype) if layout.dtype != F32 else w
    y = ops.matmul(x, w, transpose_b=True)
    if qz.out_scale is not None:
        y = ops.mul(y, ops.constant(lin.key + ".out_scale", qz.out_scale.reshape(1, 1, -1)))
    return y


def norm(ops: Ops, layout: RankLayout, x: Tensor, key: str, params, rank: int = 3) -> Tensor:
    """LayerNorm or RMSNorm over the last dim of a rank-``rank`` ``x``, computed in fp32; RMSNorm scales in the
    model dtype like transformers."""
    weight, bias = params
    x32 = ops.cast(x, F32) if layout.dtype != F32 else x
    if layout.spec.norm == "rmsnorm":
        var = ops.reduce_mean_last(ops.mul(x32, x32))
        y = ops.div(x32, ops.sqrt(ops.add(var, ops.scalar(layout.spec.norm_epsilon, F32, rank))))
        y = ops.cast(y, layout.dtype) if layout.dtype != F32 else y
        return ops.mul(y, ops.constant(key + ".weight", weight.reshape((1,) * (rank - 1) + (-1,))))
    w = ops.constant(key + ".weight", weight.astype(np.float32).reshape(1, 1, -1))
    b = ops.constant(key + ".bias", bias.astype(np.float32).reshape(1, 1, -1))
    y = ops.layer_norm(x32, w, b, layout.spec.norm_epsilon)
    return ops.cast(y, layout.dtype) if layout.dtype != F32 else y


def softcap(ops: Ops, x: Tensor, cap: float, dtype: str, rank: int) -> Tensor:
    """``cap * tanh(x / cap)`` in ``dtype`` (Gemma 2's attention scores and final logits)."""
    c = ops.scalar(cap, dtype, rank)
    return ops.mul(ops.activation(ops.div(x, c), "tanh"), c)


def activation(ops: Ops, x: Tensor, kind: str) -> Tensor:
    """``kind``: ``ModelSpec.activation`` (relu, silu, gelu_tanh, gelu_erf; ckptfmt.semantics)."""
    if kind == "silu":
        return ops.mul(x, ops.activation(x, "sigmoid"))
    if kind in ("gelu_erf", "gelu_tanh", "relu"):
        return ops.activation(x, kind)
    raise ValueError(f"hidden_act: unsupported {kind!r}")


def attention(ctx: _StepContext, w: RankWeights, local: int, x: Tensor, caches) -> tuple[Tensor, list]:
    with ctx.ops.scope("attention"):
        return _attention(ctx, w, local, x, caches)


def _attention(ctx: _StepContext, w: RankWeights, local: int, x: Tensor, caches) -> tuple[Tensor, list]:
    ops, layout = ctx.ops, ctx.layout
    d, nq, nkv = layout.spec.head_size, layout.heads, layout.kv_heads
    qkv = linear(ops, layout, x, w.linear(local, QKV))  # [B, S, (nq + 2 nkv) d], q pre-scaled

    def heads(start: int, n: int) -> Tensor:  # -> [B, n, S, d]
        part = ops.slice_last(qkv, start * d, n * d)
        return ops.transpose(ops.reshape(part, (0, 0, n, d)), (0, 2, 1, 3))

    q, k, v = heads(0, nq), heads(nq, nkv), heads(nq + nkv, nkv)
    if layout.spec.qk_norm:  # per head, before the rotary embedding (Gemma 3); q's weight carries the scale
        qw, kw = w.qk_norms(local)
        q = norm(ops, layout, q, f"layers.{local}.{Q_NORM}", (qw, None), rank=4)
        k = norm(ops, layout, k, f"layers.{local}.{K_NORM}", (kw, None), rank=4)
    rope = ctx.rope(local)
    if rope is not None:
        cos, sin = rope
        rd, inter = layout.spec.rotary_dim, layout.spec.rotary_interleaved
        q = ops.rope(q, cos, sin, ctx.positions, inter, rd)
        k = ops.rope(k, cos, sin, ctx.positions, inter, rd)
    kv_scale = w.kv_cache_scale(local)
    if kv_scale is not None:  # INT8 / FP8 cache: the model-dtype cache holds the fake-quantized keys and values
        codes = "int8" if layout.config.quantization.kv_cache == "int8" else "fp8"
        k = fake_quant(ops, layout, k, f"layers.{local}.kv_scale", kv_scale, codes)
        v = fake_quant(ops, layout, v, f"layers.{local}.kv_scale", kv_scale, codes)
    k_all = ops.kv_cache_update(caches[0], k, ctx.write_index)
    v_all = ops.kv_cache_update(caches[1], v, ctx.write_index)
    cap = layout.spec.attn_logit_softcapping
    if cap is None and ctx.alibi is None:
        o = ops.attention(q, k_all, v_all, ctx.mask(local))  # [B, nq, S, d]
    else:
        o = explicit_attention(ctx, q, k_all, v_all, ctx.mask(local), cap, ctx.alibi)
    o = ops.reshape(ops.transpose(o, (0, 2, 1, 3)), (0, 0, nq * d))
    return linear(ops, layout, o, w.linear(local, DENSE), reduce=True), [k_all, v_all]


def explicit_attention(
    ctx: _StepContext, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, cap: float | None, bias: Tensor | None
) -> Tensor:
    """Attention from matmul / tanh / add / select / softmax layers, for what the attention layer does not take:
    soft-capped scores (Gemma 2) and the ALiBi ``bias`` ([1, nkv, group, 1, max_seq_len]):
    ``softmax(mask(cap * tanh(q.k / cap) + bias)) v``, scores and softmax in fp32. A query head group folds
    into the rows of its kv head (``[B, nkv, group * S, d]``), so no key or value is copied."""
    ops, layout = ctx.ops, ctx.layout
    d, nq, nkv, smax = layout.spec.head_size, layout.heads, layout.kv_heads, layout.build.max_seq_len
    q32, k32 = (ops.cast(x, F32) if layout.dtype != F32 else x for x in (q, k))
    scores = ops.matmul(ops.reshape(q32, (0, nkv, -1, d)), k32, transpose_b=True)  # [B, nkv, group * S, smax]
    if cap is not None:
        scores = softcap(ops, scores, cap, F32, 4)
    scores = ops.reshape(scores, (0, 0, nq // nkv, -1, smax))
    if bias is not None:
        scores = ops.add(scores, bias)
    visible = ops.reshape(mask, (0, 1, 1, -1, smax))
    scores = ops.where(visible, scores, ops.scalar(float("-inf"), F32, 5))
    p = ops.softmax_last(scores)
    p = ops.reshape(ops.cast(p, layout.dtype) if layout.dtype != F32 else p, (0, 0, -1, smax))
    return ops.reshape(ops.matmul(p, v), (0, nq, -1, d))  # [B, nq, S, d]


def mlp(ops: Ops, layout: RankLayout, w: RankWeights, local: int, x: Tensor) -> Tensor:
    """``proj(act(fc(x)) [* gate(x)])``; a gated MLP stored fc-then-gate runs both as one GEMM."""
    with ops.scope("mlp"):
        return _mlp(ops, layout, w, local, x)


def _mlp(ops: Ops, layout: RankLayout, w: RankWeights, local: int, x: Tensor) -> Tensor:
    both = w.fc_gate(local) if layout.spec.gated_mlp else None
    if both is not None:
        y, ffn = linear(ops, layout, x, both), both.out_features // 2
        fc, gate = ops.slice_last(y, 0, ffn), ops.slice_last(y, ffn, ffn)
    else:
        fc = linear(ops, layout, x, w.linear(local, FC))
        gate = linear(ops, layout, x, w.linear(local, GATE)) if layout.spec.gated_mlp else None
    h = activation(ops, fc, layout.spec.activation)
    if gate is not None:
        h = ops.mul(h, gate)
    return linear(ops, layout, h, w.linear(local, PROJ), reduce=True)


def decoder_layer(ctx: _StepContext, w: RankWeights, local: int, h: Tensor, caches) -> tuple[Tensor, list]:
    ops, layout, spec = ctx.ops, ctx.layout, ctx.layout.spec
    attn_norm = f"layers.{local}.{spec.attn_norm}"
    if not spec.pre_norm:  # OPT post-norm: x = norm(x + attn(x)); x = norm(x + mlp(x))
        a, present = attention(ctx, w, local, h, caches)
        h = norm(ops, layout, ops.add(h, a), attn_norm, w.layer_norm(local, spec.attn_norm))
        m = mlp(ops, layout, w, local, h)
        return norm(
            ops, layout, ops.add(h, m), f"layers.{local}.{spec.mlp_norm}", w.layer_norm(local, spec.mlp_norm)
        ), present
    x1 = norm(ops, layout, h, attn_norm, w.layer_norm(local, spec.attn_norm))
    a, present = attention(ctx, w, local, x1, caches)
    if spec.parallel_residual:  # x + attn(n1(x)) + mlp(n2(x)); Falcon-7B: one norm feeds both
        x2 = (
            x1
            if spec.mlp_norm is None
            else norm(ops, layout, h, f"layers.{local}.{spec.mlp_norm}", w.layer_norm(local, spec.mlp_norm))
        )
        return ops.add(ops.add(h, a), mlp(ops, layout, w, local, x2)), present
    h = ops.add(h, sublayer_norm(ops, layout, w, local, spec.attn_out_norm, a))
    x2 = norm(ops, layout, h, f"layers.{local}.{spec.mlp_norm}", w.layer_norm(local, spec.mlp_norm))
    return ops.add(h, sublayer_norm(ops, layout, w, local, spec.mlp_out_norm, mlp(ops, layout, w, local, x2))), present


def sublayer_norm(ops: Ops, layout: RankLayout, w: RankWeights, local: int, name: str | None, y: Tensor) -> Tensor:
    """``y`` normed by the layer's norm ``name`` (Gemma 2/3's norms on the attention and MLP outputs); as is
    for None."""
    return y if name is None else norm(ops, layout, y, f"layers.{local}.{name}", w.layer_norm(local, name))


def logits(ops: Ops, layout: RankLayout, w: RankWeights, h: Tensor) -> Tensor:
    """[B, S, H] hidden states -> [B, S, vocab] logits in logits_dtype (full vocab on every tp rank)."""
    if layout.spec.has_ln_f:
        h = norm(ops, layout, h, "ln_f", w.final_norm())
    proj = w.project_out()
    if proj is not None:
        h = ops.matmul(h, ops.constant("project_out", proj.reshape(1, *proj.shape)), transpose_b=True)
    head, bias = w.lm_head()
    out = ops.matmul(h, ops.constant("lm_head", head.reshape(1, *head.shape)), transpose_b=True)  # [B, S, V/tp]
    if bias is not None:
        out = ops.add(out, ops.constant("lm_head.bias", bias.reshape(1, 1, -1)))
    if layout.tp_size > 1:  # ranks hold consecutive vocab slices: gather them on dim 0, move it last
        out = ops.transpose(ops.all_gather(ops.transpose(out, (2, 0, 1))), (1, 2, 0))  # [B, S, padded V]
    if layout.padded_vocab != layout.spec.vocab_size:
        out = ops.slice_last(out, 0, layout.spec.vocab_size)
    if layout.spec.final_logit_softcapping is not None:  # in the model dtype, as the torch backend
        out = softcap(ops, out, layout.spec.final_logit_softcapping, layout.dtype, 3)
    return ops.cast(out, layout.build.logits_dtype) if layout.build.logits_dtype != layout.dtype else out
