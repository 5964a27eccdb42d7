"""Triton kernels of the fused one-token decode step (``fused_decode``): a matrix-vector product with the
RMSNorm before it and the residual add or gated activation after it fused in, and grouped-query decode
attention with rotary and the KV-cache write fused in.

Imported only where triton is installed (CUDA builds of torch ship it). With ``TRITON_INTERPRET=1`` set before
the import, the same kernels run on CPU tensors through triton's interpreter, which is how the tests check
them on machines without a GPU.

Quantized checkpoints (``quantized``): a GEMV may read its weight as codes (float8 e4m3 or int8) with a float32
scale per row, and quantize its input as the linear's ``InputQuant`` does; the attention may quantize the keys
and values it writes as ``KVQuant`` does. The rounding to e4m3 or to an integer is done in float32 and integer
arithmetic (``_round_e4m3``, ``_rint``: round to nearest, ties to even, as torch's casts do), not by a cast to
float8: triton's interpreter rounds that cast differently, so this way the compiled kernels, the interpreted
ones and the torch backend compute the same codes.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _round(x, dtype: tl.constexpr):
    """``x`` (float32) rounded to the model dtype and back, where the unfused path holds a model-dtype tensor."""
    return x.to(dtype).to(tl.float32)


@triton.jit
def _activate(x, ACT: tl.constexpr):
    if ACT == "silu":
        return x / (1.0 + tl.exp(-x))
    elif ACT == "relu":
        return tl.maximum(x, 0.0)
    elif ACT == "gelu":
        return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    else:  # gelu_tanh: tanh(u) = 2 sigmoid(2u) - 1
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        return x * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * u)))


@triton.jit
def _rint(z):
    """``z`` (float32, ``|z| < 2**22``) rounded to an integer, ties to even (``torch.round``): adding 2**23 leaves
    no fraction bits, and the integer is read from the bits (no float subtraction for a compiler to fold)."""
    n = ((tl.abs(z) + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000).to(tl.float32)
    return tl.where(z < 0, -n, n)


@triton.jit
def _round_e4m3(y):
    """``y`` (float32, ``|y| <= 448``) rounded to the nearest float8 e4m3 value, ties to even (torch's cast to
    float8_e4m3fn): 3 fraction bits at y's exponent, 2**-9 steps below 2**-6 (subnormals)."""
    a = tl.abs(y)
    e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    up = ((130 - e) << 23).to(tl.float32, bitcast=True)  # 2**(3 - e), exact scalings by powers of two
    down = ((124 + e) << 23).to(tl.float32, bitcast=True)  # 2**(e - 3)
    q = _rint(a * up) * down
    return tl.where(y < 0, -q, q)


@triton.jit
def _fake_quant(x, scale, KIND: tl.constexpr, dtype: tl.constexpr):
    """``quantized.fake_quant``: x / scale (IEEE division) clamped and rounded to e4m3 (KIND "fp8") or to an
    integer in [-128, 127] ("int8"), times scale, rounded to the model dtype."""
    y = tl.math.div_rn(x, scale)
    if KIND == "fp8":  # noqa: SIM108 (a compile-time branch)
        q = _round_e4m3(tl.clamp(y, -448.0, 448.0))
    else:
        q = _rint(tl.clamp(y, -128.0, 127.0))
    return _round(q * scale, dtype)


@triton.jit
def _quant_input(x, cols, K, PRE, scale, AQ: tl.constexpr, HAS_PRE: tl.constexpr, dtype: tl.constexpr):
    """What a quantized linear does to its input (``quantized.InputQuant``): x * PRE (model dtype), then the
    fake quantization with ``scale`` (AQ "fp8", "int8", "int8_tok"; "none": none)."""
    if HAS_PRE:
        x = _round(x * tl.load(PRE + cols, mask=cols < K, other=0.0).to(tl.float32), dtype)
    if AQ == "fp8":
        x = _fake_quant(x, scale, "fp8", dtype)
    elif AQ != "none":
        x = _fake_quant(x, scale, "int8", dtype)
    return x


@triton.jit
def _input_scale(X, cols, K, NORM, PRE, XS, scale, BK: tl.constexpr, AQ: tl.constexpr, HAS_NORM: tl.constexpr,
                 HAS_PRE: tl.constexpr, dtype: tl.constexpr):  # fmt: skip
    """The activation scale: XS[0] (per tensor), or for AQ "int8_tok" the input's largest magnitude (after
    norm and PRE) / 127, 1 where it is 0 (``quantized.per_token_scale``)."""
    if AQ == "int8_tok":
        amax = tl.zeros((BK,), tl.float32)
        for k0 in range(0, K, BK):
            x = _quant_input(_load_input(X, k0 + cols, K, NORM, scale, HAS_NORM, dtype), k0 + cols, K, PRE,
                             1.0, "none", HAS_PRE, dtype)  # fmt: skip
            amax = tl.maximum(amax, tl.abs(x))
        s = tl.math.div_rn(tl.max(amax, 0), 127.0)
        return tl.where(s == 0.0, 1.0, s)
    elif AQ != "none":
        return tl.load(XS).to(tl.float32)
    else:
        return 1.0


@triton.jit
def _load_input(X, cols, K, NORM, scale, HAS_NORM: tl.constexpr, dtype: tl.constexpr):
    """Elements ``cols`` of the input vector (float32), RMS-normalized and scaled when HAS_NORM."""
    col_ok = cols < K
    x = tl.load(X + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_NORM:
        g = tl.load(NORM + cols, mask=col_ok, other=0.0).to(tl.float32)
        x = _round(_round(x * scale, dtype) * g, dtype)
    return x


@triton.jit
def gemv_kernel(
    X,
    NORM,
    W,
    BIAS,
    Y,
    RES,
    WS,
    XS,
    PRE,
    N,
    K,
    eps,
    HAS_NORM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    GATED: tl.constexpr,
    ACT: tl.constexpr,
    PDL: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    WQ: tl.constexpr = False,
    AQ: tl.constexpr = "none",
    HAS_PRE: tl.constexpr = False,
    SPLIT_ACT: tl.constexpr = False,
):
    """``Y[n] = act(W @ norm(X) + BIAS)[n] (+ RES[n])`` for rows n < N of W [N or 2N, K]; one vector X [K].

    HAS_NORM: X is RMS-normalized first (float32 statistics, then scaled by NORM in the model dtype).
    ACT: "none", "silu", "relu", "gelu" or "gelu_tanh". GATED: W (and BIAS) hold [fc; gate] (2N rows) and
    ``Y[n] = act(fc . x) * (gate . x)``. Accumulation is float32; products are rounded to the model dtype
    (X's) where the unfused path holds model-dtype tensors. RES may be Y itself: each program reads and
    writes only its own BN rows.

    Quantized linears (``quantized``): WQ: W holds codes (float8 e4m3 or int8), row r's weight is
    ``W[r] * WS[r]`` (the scale is applied to the row's sum). AQ: the input is quantized as ``InputQuant``
    does, after ``x * PRE`` where HAS_PRE: "fp8" / "int8" with the scale XS[0], "int8_tok" with its own
    per-token scale. SPLIT_ACT: the gate rows' input has its own PRE (at PRE + K) and scale (XS[1]).

    PDL (programmatic dependent launch, sm90+): the next kernel may start while this one runs, and this one
    reads its first weight tile (which no kernel of the step writes) before it waits for the previous
    kernel, so the weight stream starts without a gap.
    """
    dtype: tl.constexpr = X.dtype.element_ty
    if PDL:
        gdc_launch_dependents()
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    cols = tl.arange(0, BK)
    rows64 = rows.to(tl.int64)  # offsets in 64 bits: vocab x hidden may pass 2**31
    w_ptr = W + rows64[:, None] * K + cols[None, :]
    gate_ptr = W + (rows64 + N)[:, None] * K + cols[None, :]
    w_mask = row_ok[:, None] & (cols < K)[None, :]
    w = tl.load(w_ptr, mask=w_mask, other=0.0, eviction_policy="evict_first")
    w_gate = w
    if GATED:
        w_gate = tl.load(gate_ptr, mask=w_mask, other=0.0, eviction_policy="evict_first")
    if PDL:
        gdc_wait()  # X and RES are written by earlier kernels of the step
    scale = 1.0
    if HAS_NORM:
        squares = tl.zeros((BK,), tl.float32)
        for k0 in range(0, K, BK):
            x = tl.load(X + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            squares += x * x
        scale = tl.rsqrt(tl.sum(squares, 0) / K + eps)
    x_scale = _input_scale(X, cols, K, NORM, PRE, XS, scale, BK, AQ, HAS_NORM, HAS_PRE, dtype)
    g_scale = x_scale
    if SPLIT_ACT:
        g_scale = _input_scale(X, cols, K, NORM, PRE + K, XS + 1, scale, BK, AQ, HAS_NORM, HAS_PRE, dtype)
    # accumulate elementwise [BN, BK], reduce once at the end
    x_in = _load_input(X, cols, K, NORM, scale, HAS_NORM, dtype)
    x = _quant_input(x_in, cols, K, PRE, x_scale, AQ, HAS_PRE, dtype)
    x_gate = x
    if SPLIT_ACT:
        x_gate = _quant_input(x_in, cols, K, PRE + K, g_scale, AQ, HAS_PRE, dtype)
    acc = w.to(tl.float32) * x[None, :]
    acc_gate = w_gate.to(tl.float32) * x_gate[None, :]
    for k0 in range(BK, K, BK):
        x_in = _load_input(X, k0 + cols, K, NORM, scale, HAS_NORM, dtype)
        x = _quant_input(x_in, k0 + cols, K, PRE, x_scale, AQ, HAS_PRE, dtype)
        w_mask = row_ok[:, None] & (k0 + cols < K)[None, :]
        w = tl.load(w_ptr + k0, mask=w_mask, other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x[None, :]
        if GATED:
            x_gate = x
            if SPLIT_ACT:
                x_gate = _quant_input(x_in, k0 + cols, K, PRE + K, g_scale, AQ, HAS_PRE, dtype)
            w_gate = tl.load(gate_ptr + k0, mask=w_mask, other=0.0, eviction_policy="evict_first")
            acc_gate += w_gate.to(tl.float32) * x_gate[None, :]
    y = tl.sum(acc, 1)
    if WQ:
        y *= tl.load(WS + rows, mask=row_ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(BIAS + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = _round(y, dtype)
    if GATED:
        y_gate = tl.sum(acc_gate, 1)
        if WQ:
            y_gate *= tl.load(WS + N + rows, mask=row_ok, other=0.0)
        if HAS_BIAS:
            y_gate += tl.load(BIAS + N + rows, mask=row_ok, other=0.0).to(tl.float32)
        y = _round(_round(_activate(y, ACT), dtype) * _round(y_gate, dtype), dtype)
    elif ACT != "none":
        y = _round(_activate(y, ACT), dtype)
    if HAS_RES:
        y += tl.load(RES + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(Y + rows, y.to(dtype).to(Y.dtype.element_ty), mask=row_ok)


@triton.jit
def _rotate(x, partner, d, cos, sin, ROT: tl.constexpr, INTERLEAVED: tl.constexpr):
    """x cos + turned(x) sin on the first ROT channels; ``partner`` is x at the paired channel."""
    if INTERLEAVED:  # noqa: SIM108 (a compile-time branch)
        sign = tl.where(d % 2 == 0, -1.0, 1.0)
    else:
        sign = tl.where(d < ROT // 2, -1.0, 1.0)
    return tl.where(d < ROT, x * cos + sign * partner * sin, x)


@triton.jit
def decode_attention_kernel(
    QKV,
    KV,
    OUT,
    INV_FREQ,
    SLOT,
    PAD,
    PARTS,
    CHUNK,
    kv_part,
    kv_head,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    ROT: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SPLITS: tl.constexpr,
    SCALE: tl.constexpr,
    PDL: tl.constexpr,
    KV_SCALE=None,
    KVQ: tl.constexpr = "none",
):
    """One query position against the cache (batch 1): rotary on q and k (position slot - pad), the new k and
    v written at ``slot`` of KV [2, 1, kv_heads, max_seq, D], then softmax(q k^T * SCALE) v over keys
    pad .. slot. One program per (query head, split); the first head of each group writes k
    and v, and every program takes the new position from registers, so no program reads what another writes.

    SPLITS > 1 (long caches): split ``i`` takes cache positions [i CHUNK, (i + 1) CHUNK) and writes its
    unnormalized partial (running max, denominator, weighted sum of values) to PARTS for
    ``attention_combine_kernel``; split 0 also holds the new position. SPLITS == 1 writes OUT directly.

    KVQ "fp8" / "int8": the new k and v are fake-quantized with KV_SCALE[0] (``quantized.KVQuant``) before
    they are written and used, so the cache holds what the torch backend's does."""
    dtype: tl.constexpr = QKV.dtype.element_ty
    if PDL:  # see gemv_kernel
        gdc_launch_dependents()
        gdc_wait()
    h = tl.program_id(0)
    split = tl.program_id(1)
    GROUP: tl.constexpr = HEADS // KV_HEADS
    g = h // GROUP
    slot = tl.load(SLOT)
    pad = tl.load(PAD)
    d = tl.arange(0, BD)
    d_ok = d < D
    q_row, k_row, v_row = QKV + h * D, QKV + (HEADS + g) * D, QKV + (HEADS + KV_HEADS + g) * D
    q = tl.load(q_row + d, mask=d_ok, other=0.0).to(tl.float32)
    k = tl.load(k_row + d, mask=d_ok, other=0.0).to(tl.float32)
    v = tl.load(v_row + d, mask=d_ok, other=0.0).to(tl.float32)
    if ROT > 0:
        rotated = d < ROT
        if INTERLEAVED:
            partner = d ^ 1
            freq = d // 2
        else:
            partner = tl.where(d < ROT // 2, d + ROT // 2, d - ROT // 2)
            freq = d % (ROT // 2)
        position = tl.maximum(slot - pad, 0).to(tl.float32)
        angle = position * tl.load(INV_FREQ + freq, mask=rotated, other=0.0)
        cos, sin = _round(tl.cos(angle), dtype), _round(tl.sin(angle), dtype)
        q_partner = tl.load(q_row + partner, mask=rotated, other=0.0).to(tl.float32)
        k_partner = tl.load(k_row + partner, mask=rotated, other=0.0).to(tl.float32)
        q = _round(_rotate(q, q_partner, d, cos, sin, ROT, INTERLEAVED), dtype)
        k = _round(_rotate(k, k_partner, d, cos, sin, ROT, INTERLEAVED), dtype)
    if KVQ != "none":
        kv_scale = tl.load(KV_SCALE).to(tl.float32)
        k = _fake_quant(k, kv_scale, KVQ, dtype)
        v = _fake_quant(v, kv_scale, KVQ, dtype)
    cache = KV + g * kv_head
    if (h % GROUP == 0) & (split == 0):
        tl.store(cache + slot * D + d, k.to(KV.dtype.element_ty), mask=d_ok)
        tl.store(cache + kv_part + slot * D + d, v.to(KV.dtype.element_ty), mask=d_ok)
    q = q * SCALE
    # split 0 seeds the online softmax with the new position (always visible), the others start empty;
    # then each walks its share of the cached keys pad .. slot - 1
    first = split == 0
    m = tl.where(first, tl.sum(q * k, 0), float("-inf"))
    denom = tl.where(first, 1.0, 0.0)
    acc = tl.where(first, v, 0.0)
    lo = tl.maximum(split * CHUNK, pad)
    hi = tl.minimum(split * CHUNK + CHUNK, slot)
    for start in range(lo, hi, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        valid = s < hi
        tile = valid[:, None] & d_ok[None, :]
        keys = tl.load(cache + s[:, None] * D + d[None, :], mask=tile, other=0.0).to(tl.float32)
        scores = tl.where(valid, tl.sum(keys * q[None, :], 1), float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new)
        values = tl.load(cache + kv_part + s[:, None] * D + d[None, :], mask=tile, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * values, 0)
        denom = denom * alpha + tl.sum(p, 0)
        m = m_new
    if SPLITS == 1:
        tl.store(OUT + h * D + d, (acc / denom).to(OUT.dtype.element_ty), mask=d_ok)
    else:
        part = PARTS + (h * SPLITS + split) * (BD + 2)  # [max, denominator, BD sums]
        tl.store(part, m)
        tl.store(part + 1, denom)
        tl.store(part + 2 + d, acc)


@triton.jit
def attention_combine_kernel(
    PARTS,
    OUT,
    HEADS: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    SPLITS: tl.constexpr,
    PDL: tl.constexpr,
):
    """OUT[h] from the SPLITS partials of ``decode_attention_kernel``, each rescaled to the common max.
    One program per head."""
    if PDL:  # see gemv_kernel
        gdc_launch_dependents()
        gdc_wait()
    h = tl.program_id(0)
    d = tl.arange(0, BD)
    parts = PARTS + (h * SPLITS + tl.arange(0, SPLITS)) * (BD + 2)
    m = tl.load(parts)
    weight = tl.exp(m - tl.max(m, 0))  # an empty split (max -inf) weighs 0
    denom = tl.sum(tl.load(parts + 1) * weight, 0)
    acc = tl.sum(tl.load(parts[:, None] + 2 + d[None, :]) * weight[:, None], 0)
    tl.store(OUT + h * D + d, (acc / denom).to(OUT.dtype.element_ty), mask=d < D)
