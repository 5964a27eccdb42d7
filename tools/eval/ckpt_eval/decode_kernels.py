"""Triton kernels of the fused one-token decode step (``fused_decode``): a matrix-vector product with the
RMSNorm or LayerNorm before it and the residual add or gated activation after it fused in (``gemv_kernel``,
one sequence; ``gemv_batch_kernel``, 2-16 sequences reading each weight tile once), grouped-query decode
attention with rotary (or ALiBi), the sliding window and the KV-cache write fused in, per sequence of a
left-padded batch, and the embedding lookup.

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
def _fake_quant(x, scale, KIND: tl.constexpr, dtype: tl.constexpr, CAST: tl.constexpr = False):
    """``quantized.fake_quant``: x / scale (IEEE division) clamped and rounded to e4m3 (KIND "fp8") or to an
    integer in [-128, 127] ("int8"), times scale, rounded to the model dtype. CAST: e4m3 by the GPU's own
    conversion (round to nearest even, as the arithmetic form; compiled kernels only, the interpreter rounds
    it otherwise): one instruction instead of a dozen, for bench/fused_decode.py --fp8 to time."""
    y = tl.math.div_rn(x, scale)
    if KIND == "fp8" and CAST:
        q = tl.clamp(y, -448.0, 448.0).to(tl.float8e4nv).to(tl.float32)
    elif KIND == "fp8":
        q = _round_e4m3(tl.clamp(y, -448.0, 448.0))
    else:
        q = _rint(tl.clamp(y, -128.0, 127.0))
    return _round(q * scale, dtype)


@triton.jit
def _quant_input(x, cols, K, PRE, scale, AQ: tl.constexpr, HAS_PRE: tl.constexpr, dtype: tl.constexpr,
                 CAST: tl.constexpr = False):  # fmt: skip
    """What a quantized linear does to its input (``quantized.InputQuant``): x * PRE (model dtype), then the
    fake quantization with ``scale`` (AQ "fp8", "int8", "int8_tok"; "none": none; CAST: see ``_fake_quant``)."""
    if HAS_PRE:
        x = _round(x * tl.load(PRE + cols, mask=cols < K, other=0.0).to(tl.float32), dtype)
    if AQ == "fp8":
        x = _fake_quant(x, scale, "fp8", dtype, CAST)
    elif AQ != "none":
        x = _fake_quant(x, scale, "int8", dtype)
    return x


@triton.jit
def _quant_output(y, cols, N, OPRE, OXS, OAQ: tl.constexpr, OHAS_PRE: tl.constexpr, dtype: tl.constexpr):
    """A kernel's outputs ``y`` (float32; elements ``cols`` < N of the next linear's input) rounded to the model
    dtype, then, OAQ not "none", quantized as that linear's ``InputQuant`` does (``_quant_input`` with the scale
    OXS[0] and pre-quant scale OPRE), so that the next GEMV reads its input quantized once (``AQ`` "none")
    instead of quantizing it again in each of its programs."""
    y = _round(y, dtype)
    if OAQ != "none":
        y = _quant_input(y, cols, N, OPRE, tl.load(OXS).to(tl.float32), OAQ, OHAS_PRE, dtype)
    return y


@triton.jit
def _input_scale(X, cols, K, NORM, NBIAS, PRE, XS, mean, scale, BK: tl.constexpr, AQ: tl.constexpr,
                 HAS_NORM: tl.constexpr, LAYER: tl.constexpr, HAS_PRE: tl.constexpr, dtype: tl.constexpr):  # fmt: skip
    """The activation scale: XS[0] (per tensor), or for AQ "int8_tok" each input row's largest magnitude
    (after norm and PRE) / 127, 1 where it is 0 (``quantized.per_token_scale``)."""
    if AQ == "int8_tok":
        amax = tl.zeros_like(cols).to(tl.float32)
        for k0 in range(0, K, BK):
            x = _load_normed(X, k0 + cols, K, NORM, NBIAS, mean, scale, HAS_NORM, LAYER, dtype)
            x = _quant_input(x, k0 + cols, K, PRE, 1.0, "none", HAS_PRE, dtype)
            amax = tl.maximum(amax, tl.abs(x))
        s = tl.math.div_rn(tl.max(amax, -1, keep_dims=True), 127.0)
        return tl.where(s == 0.0, 1.0, s)
    elif AQ != "none":
        return tl.load(XS).to(tl.float32)
    else:
        return 1.0


@triton.jit
def _norm_stats(X, cols, K, eps, LAYER: tl.constexpr, BK: tl.constexpr):
    """(mean, 1 / sqrt(variance + eps)) of the input rows in float32, reduced over the last axis with it
    kept; RMSNorm (LAYER False) takes the mean as 0."""
    mean = 0.0
    if LAYER:
        total = tl.zeros_like(cols).to(tl.float32)
        for k0 in range(0, K, BK):
            total += tl.load(X + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
        mean = tl.sum(total, -1, keep_dims=True) / K
    squares = tl.zeros_like(cols).to(tl.float32)
    for k0 in range(0, K, BK):
        x = tl.load(X + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
        x = tl.where(k0 + cols < K, x - mean, 0.0)
        squares += x * x
    return mean, tl.rsqrt(tl.sum(squares, -1, keep_dims=True) / K + eps)


@triton.jit
def _load_input(X, cols, K, NORM, scale, HAS_NORM: tl.constexpr, dtype: tl.constexpr):
    """Elements ``cols`` of the input (float32), RMS-normalized (1 / rms ``scale``) and scaled when HAS_NORM."""
    return _load_normed(X, cols, K, NORM, NORM, 0.0, scale, HAS_NORM, False, dtype)


@triton.jit
def _load_normed(X, cols, K, NORM, NBIAS, mean, scale, HAS_NORM: tl.constexpr, LAYER: tl.constexpr,
                 dtype: tl.constexpr):  # fmt: skip
    """Elements ``cols`` of the input (float32), normalized when HAS_NORM: RMSNorm (normalized, rounded,
    times NORM, rounded) or LAYER (``(x - mean) * scale * NORM + NBIAS`` in float32, rounded once)."""
    col_ok = cols < K
    x = tl.load(X + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_NORM:
        g = tl.load(NORM + cols, mask=col_ok, other=0.0).to(tl.float32)
        if LAYER:
            b = tl.load(NBIAS + cols, mask=col_ok, other=0.0).to(tl.float32)
            x = _round((x - mean) * scale * g + b, dtype)
        else:
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
    LAYER: tl.constexpr = False,
    NBIAS=None,
    CAST: tl.constexpr = False,
    OXS=None,
    OPRE=None,
    OAQ: tl.constexpr = "none",
    OHAS_PRE: tl.constexpr = False,
):
    """``Y[n] = act(W @ norm(X) + BIAS)[n] (+ RES[n])`` for rows n < N of W [N or 2N, K]; one vector X [K].

    HAS_NORM: X is normalized first (float32 statistics): RMSNorm scaled by NORM in the model dtype, or
    LAYER: LayerNorm with weight NORM and bias NBIAS. ACT: "none", "silu", "relu", "gelu" or "gelu_tanh".
    GATED: W (and BIAS) hold [fc; gate] (2N rows) and ``Y[n] = act(fc . x) * (gate . x)``. Accumulation is
    float32; products are rounded to the model dtype (X's) where the unfused path holds model-dtype tensors.
    RES may be Y itself: each program reads and writes only its own BN rows.

    Quantized linears (``quantized``): WQ: W holds codes (float8 e4m3 or int8), row r's weight is
    ``W[r] * WS[r]`` (the scale is applied to the row's sum). AQ: the input is quantized as ``InputQuant``
    does, after ``x * PRE`` where HAS_PRE: "fp8" / "int8" with the scale XS[0], "int8_tok" with its own
    per-token scale. SPLIT_ACT: the gate rows' input has its own PRE (at PRE + K) and scale (XS[1]). CAST: the
    input's e4m3 rounding by the GPU's conversion instead of arithmetic (``_fake_quant``; not used by the step yet).
    OAQ (with OXS, OPRE, OHAS_PRE): Y is the next linear's input, stored quantized as it quantizes it
    (``_quant_output``).

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
    mean, scale = 0.0, 1.0
    if HAS_NORM:
        mean, scale = _norm_stats(X, cols, K, eps, LAYER, BK)
    x_scale = _input_scale(X, cols, K, NORM, NBIAS, PRE, XS, mean, scale, BK, AQ, HAS_NORM, LAYER, HAS_PRE, dtype)
    g_scale = x_scale
    if SPLIT_ACT:
        g_scale = _input_scale(X, cols, K, NORM, NBIAS, PRE + K, XS + 1, mean, scale, BK, AQ, HAS_NORM, LAYER,
                               HAS_PRE, dtype)  # fmt: skip
    # accumulate elementwise [BN, BK], reduce once at the end
    x_in = _load_normed(X, cols, K, NORM, NBIAS, mean, scale, HAS_NORM, LAYER, dtype)
    x = _quant_input(x_in, cols, K, PRE, x_scale, AQ, HAS_PRE, dtype, CAST)
    x_gate = x
    if SPLIT_ACT:
        x_gate = _quant_input(x_in, cols, K, PRE + K, g_scale, AQ, HAS_PRE, dtype, CAST)
    acc = w.to(tl.float32) * x[None, :]
    acc_gate = w_gate.to(tl.float32) * x_gate[None, :]
    for k0 in range(BK, K, BK):
        x_in = _load_normed(X, k0 + cols, K, NORM, NBIAS, mean, scale, HAS_NORM, LAYER, dtype)
        x = _quant_input(x_in, k0 + cols, K, PRE, x_scale, AQ, HAS_PRE, dtype, CAST)
        w_mask = row_ok[:, None] & (k0 + cols < K)[None, :]
        w = tl.load(w_ptr + k0, mask=w_mask, other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x[None, :]
        if GATED:
            x_gate = x
            if SPLIT_ACT:
                x_gate = _quant_input(x_in, k0 + cols, K, PRE + K, g_scale, AQ, HAS_PRE, dtype, CAST)
            w_gate = tl.load(gate_ptr + k0, mask=w_mask, other=0.0, eviction_policy="evict_first")
            acc_gate += w_gate.to(tl.float32) * x_gate[None, :]
    y = _epilogue(tl.sum(acc, 1), tl.sum(acc_gate, 1), rows, row_ok, N, BIAS, WS, HAS_BIAS, GATED, ACT, WQ, dtype)
    if HAS_RES:
        y += tl.load(RES + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = _quant_output(y, rows, N, OPRE, OXS, OAQ, OHAS_PRE, dtype)
    tl.store(Y + rows, y.to(dtype).to(Y.dtype.element_ty), mask=row_ok)


@triton.jit
def _epilogue(y, y_gate, rows, row_ok, N, BIAS, WS, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr,
              WQ: tl.constexpr, dtype: tl.constexpr):  # fmt: skip
    """Row sums ``y`` (and ``y_gate``; rows along the last axis) to outputs: weight scale, bias, activation
    (gated: ``act(y) * y_gate``), rounded to the model dtype where the unfused path rounds."""
    if WQ:
        y *= tl.load(WS + rows, mask=row_ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(BIAS + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = _round(y, dtype)
    if GATED:
        if WQ:
            y_gate *= tl.load(WS + N + rows, mask=row_ok, other=0.0)
        if HAS_BIAS:
            y_gate += tl.load(BIAS + N + rows, mask=row_ok, other=0.0).to(tl.float32)
        y = _round(_round(_activate(y, ACT), dtype) * _round(y_gate, dtype), dtype)
    elif ACT != "none":
        y = _round(_activate(y, ACT), dtype)
    return y


@triton.jit
def _batch_columns(cols, in_batch, K):
    """[BB, len(cols)] column offsets of a batch's input rows: ``cols`` in the rows of the batch, past K (read
    as nothing) in the padding rows. A whole row moves past K, rather than a ``where`` over the columns, so each
    row's columns stay contiguous and 16-aligned and its loads are vectorized (the ``where`` made them 2-byte)."""
    return cols[None, :] + tl.where(in_batch, 0, K)[:, None]


@triton.jit
def _tile_product(x, w, DOT: tl.constexpr, PRECISION: tl.constexpr, dtype: tl.constexpr):
    """``x [BB, BK] @ w [BN, BK]^T`` in float32: on tensor cores (DOT: x and w in the model dtype, which
    holds them exactly) or as broadcast multiply-adds on the CUDA cores."""
    if DOT:
        return tl.dot(x.to(dtype), tl.trans(w.to(tl.float32).to(dtype)), input_precision=PRECISION)
    else:
        return tl.sum(x[:, None, :] * w.to(tl.float32)[None, :, :], 2)


@triton.jit
def gemv_batch_kernel(
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
    B: tl.constexpr,
    BB: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    WQ: tl.constexpr = False,
    AQ: tl.constexpr = "none",
    HAS_PRE: tl.constexpr = False,
    SPLIT_ACT: tl.constexpr = False,
    LAYER: tl.constexpr = False,
    NBIAS=None,
    PREFETCH: tl.constexpr = True,
    SPLIT: tl.constexpr = 1,
    PART=None,
    COUNT=None,
    STATS_BK: tl.constexpr = 0,
    OXS=None,
    OPRE=None,
    OAQ: tl.constexpr = "none",
    OHAS_PRE: tl.constexpr = False,
):
    """``gemv_kernel`` for a batch: ``Y[b] = act(W @ norm(X[b]) + BIAS) (+ RES[b])`` for the B rows of X
    [B, K] (Y, RES: [B, N]). Each program reads its weight tile [BN, BK] once and multiplies it by all B
    inputs, held as a [BB, BK] tile (BB: B rounded up to a power of two, at least 16 for DOT; the rows past
    B read and write nothing). DOT: ``tl.dot`` on tensor cores (PRECISION "ieee" for float32 models), else
    multiply-adds on the CUDA cores. Norm statistics, per-token input scales and rounding are per row, as
    in ``gemv_kernel``.

    PREFETCH: each step of the loop loads the next weight tile while it multiplies the current one, and the
    first tile is read before the PDL wait. Otherwise the loop is the plain load-multiply form that triton's
    software pipeliner keeps ``num_stages`` (a launch option) tiles in flight for, read after the wait.

    SPLIT > 1 (split-K, for GEMVs with too few row tiles to keep every SM streaming): the grid's second axis
    splits the K columns into SPLIT ranges of whole BK tiles. Each program stores its float32 partial sums in
    PART ([SPLIT, 2, BB, N]: plain and gate) and counts itself in COUNT[row tile] (int32, zero before the
    launch); the program that counts last adds the SPLIT partials in split order (the same sum whichever
    program finishes last), applies the epilogue, and sets the count back to zero for the next launch.

    STATS_BK: the columns per step of the norm statistics' pass over the inputs (0: BK); a wider step means
    fewer dependent loads before the first multiply. OAQ: as in ``gemv_kernel``."""
    dtype: tl.constexpr = X.dtype.element_ty
    if PDL:
        gdc_launch_dependents()
    k_lo = 0
    k_hi = K
    if SPLIT > 1:
        k_span = tl.cdiv(tl.cdiv(K, SPLIT), BK) * BK
        k_lo = tl.program_id(1) * k_span
        k_hi = tl.minimum(K, k_lo + k_span)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    cols = tl.arange(0, BK)
    batch = tl.arange(0, BB)
    in_batch = batch < B
    x_cols = _batch_columns(cols, in_batch, K)  # [BB, BK]: rows past B read nothing
    x_rows = X + batch[:, None] * K
    rows64 = rows.to(tl.int64)
    w_ptr = W + rows64[:, None] * K + cols[None, :]
    gate_ptr = W + (rows64 + N)[:, None] * K + cols[None, :]
    w_mask = row_ok[:, None] & (k_lo + cols < k_hi)[None, :]
    w = tl.zeros((BN, BK), W.dtype.element_ty)  # without PREFETCH: unused
    w_gate = w
    if PREFETCH:
        w = tl.load(w_ptr + k_lo, mask=w_mask, other=0.0, eviction_policy="evict_first")
        if GATED:
            w_gate = tl.load(gate_ptr + k_lo, mask=w_mask, other=0.0, eviction_policy="evict_first")
    if PDL:
        gdc_wait()
    mean, scale = 0.0, 1.0
    if HAS_NORM:
        SB: tl.constexpr = STATS_BK if STATS_BK > 0 else BK
        stats_cols = _batch_columns(tl.arange(0, SB), in_batch, K)
        mean, scale = _norm_stats(x_rows, stats_cols, K, eps, LAYER, SB)
    x_scale = _input_scale(x_rows, x_cols, K, NORM, NBIAS, PRE, XS, mean, scale, BK, AQ, HAS_NORM, LAYER,
                           HAS_PRE, dtype)  # fmt: skip
    g_scale = x_scale
    if SPLIT_ACT:
        g_scale = _input_scale(x_rows, x_cols, K, NORM, NBIAS, PRE + K, XS + 1, mean, scale, BK, AQ, HAS_NORM,
                               LAYER, HAS_PRE, dtype)  # fmt: skip
    acc = tl.zeros((BB, BN), tl.float32)
    acc_gate = tl.zeros((BB, BN), tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        wt, wt_gate = w, w_gate
        if not PREFETCH:  # this step's tiles, named apart so that no tile is carried from step to step
            tile_ok = row_ok[:, None] & (k0 + cols < k_hi)[None, :]
            wt = tl.load(w_ptr + k0, mask=tile_ok, other=0.0, eviction_policy="evict_first")
            if GATED:
                wt_gate = tl.load(gate_ptr + k0, mask=tile_ok, other=0.0, eviction_policy="evict_first")
        x_in = _load_normed(x_rows, k0 + x_cols, K, NORM, NBIAS, mean, scale, HAS_NORM, LAYER, dtype)
        x = _quant_input(x_in, k0 + x_cols, K, PRE, x_scale, AQ, HAS_PRE, dtype)
        acc += _tile_product(x, wt, DOT, PRECISION, dtype)
        if GATED:
            x_gate = x
            if SPLIT_ACT:
                x_gate = _quant_input(x_in, k0 + x_cols, K, PRE + K, g_scale, AQ, HAS_PRE, dtype)
            acc_gate += _tile_product(x_gate, wt_gate, DOT, PRECISION, dtype)
        if PREFETCH:  # the next step's tiles; past the last tile nothing is read
            w_mask = row_ok[:, None] & (k0 + BK + cols < k_hi)[None, :]
            w = tl.load(w_ptr + k0 + BK, mask=w_mask, other=0.0, eviction_policy="evict_first")
            if GATED:
                w_gate = tl.load(gate_ptr + k0 + BK, mask=w_mask, other=0.0, eviction_policy="evict_first")
    out = batch[:, None] * N + rows[None, :]
    out_ok = in_batch[:, None] & row_ok[None, :]
    if SPLIT > 1:
        plane = BB * N
        tl.store(PART + tl.program_id(1) * 2 * plane + out, acc, mask=out_ok)
        if GATED:
            tl.store(PART + (tl.program_id(1) * 2 + 1) * plane + out, acc_gate, mask=out_ok)
        tl.debug_barrier()  # every thread's partials stored before the count says so
        if tl.atomic_add(COUNT + tl.program_id(0), 1, sem="acq_rel") == SPLIT - 1:
            acc = tl.zeros((BB, BN), tl.float32)
            acc_gate = tl.zeros((BB, BN), tl.float32)
            for s in range(SPLIT):  # in split order; from L2, where the other programs' stores are
                acc += tl.load(PART + s * 2 * plane + out, mask=out_ok, other=0.0, cache_modifier=".cg")
                if GATED:
                    acc_gate += tl.load(PART + (s * 2 + 1) * plane + out, mask=out_ok, other=0.0,
                                        cache_modifier=".cg")  # fmt: skip
            tl.store(COUNT + tl.program_id(0), 0)
            _batch_store(acc, acc_gate, rows, row_ok, out, out_ok, N, BIAS, WS, RES, Y, OXS, OPRE, HAS_BIAS, GATED, ACT,
                         WQ, HAS_RES, OAQ, OHAS_PRE, dtype)  # fmt: skip
    else:
        _batch_store(acc, acc_gate, rows, row_ok, out, out_ok, N, BIAS, WS, RES, Y, OXS, OPRE, HAS_BIAS, GATED, ACT,
                     WQ, HAS_RES, OAQ, OHAS_PRE, dtype)  # fmt: skip


@triton.jit
def _batch_store(acc, acc_gate, rows, row_ok, out, out_ok, N, BIAS, WS, RES, Y, OXS, OPRE, HAS_BIAS: tl.constexpr,
                 GATED: tl.constexpr, ACT: tl.constexpr, WQ: tl.constexpr, HAS_RES: tl.constexpr, OAQ: tl.constexpr,
                 OHAS_PRE: tl.constexpr, dtype: tl.constexpr):  # fmt: skip
    """``gemv_batch_kernel``'s outputs [BB, BN] from its float32 sums: epilogue, residual, the next linear's
    input quantization (OAQ), store."""
    y = _epilogue(acc, acc_gate, rows[None, :], row_ok[None, :], N, BIAS, WS, HAS_BIAS, GATED, ACT, WQ, dtype)
    if HAS_RES:
        y += tl.load(RES + out, mask=out_ok, other=0.0).to(tl.float32)
    y = _quant_output(y, rows[None, :], N, OPRE, OXS, OAQ, OHAS_PRE, dtype)
    tl.store(Y + out, y.to(dtype).to(Y.dtype.element_ty), mask=out_ok)


@triton.jit
def embed_kernel(
    TOKENS, E, P, X, SLOT, PAD, scale, H, BH: tl.constexpr, LOOKUP: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_POS: tl.constexpr,
):  # fmt: skip
    """Row b of X [B, H]: the embedding E[TOKENS[b]] (LOOKUP; else X[b] as it is) times ``scale`` (HAS_SCALE,
    rounded), plus the learned position P[max(SLOT - PAD[b], 0)] (HAS_POS, rounded). One program per row."""
    b = tl.program_id(0)
    cols = tl.arange(0, BH)
    ok = cols < H
    dtype: tl.constexpr = X.dtype.element_ty
    if LOOKUP:
        x = tl.load(E + tl.load(TOKENS + b).to(tl.int64) * H + cols, mask=ok, other=0.0).to(tl.float32)
    else:
        x = tl.load(X + b * H + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        x = _round(x * scale, dtype)
    if HAS_POS:
        position = tl.maximum(tl.load(SLOT) - tl.load(PAD + b), 0).to(tl.int64)
        x = _round(x + tl.load(P + position * H + cols, mask=ok, other=0.0).to(tl.float32), dtype)
    tl.store(X + b * H + cols, x.to(dtype), mask=ok)


@triton.jit
def _softcap(s, CAP: tl.constexpr):
    """``CAP * tanh(s / CAP)`` in float32 (tanh(u) = 1 - 2 / (1 + exp(2u)), exact at both ends); CAP 0: s."""
    if CAP > 0:
        return CAP * (1.0 - 2.0 / (1.0 + tl.exp(2.0 * (s / CAP))))
    else:
        return s


@triton.jit
def norm_kernel(X, NORM, NBIAS, K, eps, BK: tl.constexpr, LAYER: tl.constexpr, RES=None, HAS_RES: tl.constexpr = False):
    """Row b of X [B, K] normalized in place (OPT's post-norm layers), or with HAS_RES added to RES [B, K]
    instead (``RES[b] += norm(X[b])``, Gemma 2's norms on the attention and MLP outputs), rounded to the model
    dtype as the torch backend's sum is: one program per row."""
    b = tl.program_id(0)
    cols = tl.arange(0, BK)
    row = X + b * K
    dtype: tl.constexpr = X.dtype.element_ty
    mean, scale = _norm_stats(row, cols, K, eps, LAYER, BK)
    x = _load_normed(row, cols, K, NORM, NBIAS, mean, scale, True, LAYER, dtype)
    if HAS_RES:
        x = _round(x + tl.load(RES + b * K + cols, mask=cols < K, other=0.0).to(tl.float32), dtype)
        tl.store(RES + b * K + cols, x.to(dtype), mask=cols < K)
    else:
        tl.store(row + cols, x.to(dtype), mask=cols < K)


@triton.jit
def _rotate(x, partner, d, cos, sin, ROT: tl.constexpr, INTERLEAVED: tl.constexpr):
    """x cos + turned(x) sin on the first ROT channels; ``partner`` is x at the paired channel."""
    if INTERLEAVED:  # noqa: SIM108 (a compile-time branch)
        sign = tl.where(d % 2 == 0, -1.0, 1.0)
    else:
        sign = tl.where(d < ROT // 2, -1.0, 1.0)
    return tl.where(d < ROT, x * cos + sign * partner * sin, x)


@triton.jit
def _head_norm(x, rstd, W, channels, ok, dtype: tl.constexpr):
    """``model.RMSNorm`` of a head's ``channels`` given its 1 / rms ``rstd``: normalized in float32, rounded
    to the model dtype, times the weight W there."""
    return _round(_round(x * rstd, dtype) * tl.load(W + channels, mask=ok, other=0.0).to(tl.float32), dtype)


@triton.jit
def decode_attention_kernel(
    QKV,
    KV,
    OUT,
    INV_FREQ,
    SLOT,
    PAD,
    PARTS,
    ALIBI,
    CHUNK,
    WINDOW,
    kv_part,
    kv_batch,
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
    HAS_ALIBI: tl.constexpr = False,
    KV_SCALE=None,
    KVQ: tl.constexpr = "none",
    SOFTCAP: tl.constexpr = 0.0,
    QNORM=None,
    KNORM=None,
    eps=0.0,
    QK_NORM: tl.constexpr = False,
    OXS=None,
    OPRE=None,
    OAQ: tl.constexpr = "none",
    OHAS_PRE: tl.constexpr = False,
):
    """One query position of each sequence b of a left-padded batch against its cache: rotary on q and k
    (position slot - PAD[b]), the new k and v written at ``slot`` of KV [2, batch, kv_heads, max_seq, D], then
    softmax(q k^T * SCALE (+ ALiBi)) v over keys max(PAD[b], slot - WINDOW + 1) .. slot (WINDOW: the sliding
    window, else longer than the cache). HAS_ALIBI: scores gain ALIBI[h] * (key - PAD[b]), rounded to the
    model dtype (``model.alibi_bias``). One program per (query head, split, sequence); the first head of each
    group writes k and v, and every program takes the new position from registers, so no program reads what
    another writes.

    SPLITS > 1 (long caches): split ``i`` takes cache positions [i CHUNK, (i + 1) CHUNK) and writes its
    unnormalized partial (running max, denominator, weighted sum of values) to PARTS for
    ``attention_combine_kernel``; split 0 also holds the new position. SPLITS == 1 writes OUT directly.

    KVQ "fp8" / "int8": the new k and v are fake-quantized with KV_SCALE[0] (``quantized.KVQuant``) before
    they are written and used, so the cache holds what the torch backend's does. SOFTCAP > 0 (Gemma 2): each
    score becomes ``SOFTCAP * tanh(score / SOFTCAP)`` before the ALiBi term and the softmax. QK_NORM (Gemma 3):
    each q and k head is RMS-normalized (statistics in float32, ``eps``) and scaled by QNORM / KNORM [D] before
    the rotary embedding, as ``model.RMSNorm`` does. OAQ: OUT [batch, HEADS * D] is the dense GEMV's input,
    stored quantized as it quantizes it (``_quant_output``)."""
    dtype: tl.constexpr = QKV.dtype.element_ty
    if PDL:  # see gemv_kernel
        gdc_launch_dependents()
        gdc_wait()
    h = tl.program_id(0)
    split = tl.program_id(1)
    b = tl.program_id(2)
    GROUP: tl.constexpr = HEADS // KV_HEADS
    g = h // GROUP
    slot = tl.load(SLOT)
    pad = tl.load(PAD + b)
    d = tl.arange(0, BD)
    d_ok = d < D
    QKV += b * (HEADS + 2 * KV_HEADS) * D
    q_row, k_row, v_row = QKV + h * D, QKV + (HEADS + g) * D, QKV + (HEADS + KV_HEADS + g) * D
    q = tl.load(q_row + d, mask=d_ok, other=0.0).to(tl.float32)
    k = tl.load(k_row + d, mask=d_ok, other=0.0).to(tl.float32)
    v = tl.load(v_row + d, mask=d_ok, other=0.0).to(tl.float32)
    q_rstd, k_rstd = 1.0, 1.0
    if QK_NORM:  # the channels past D were read as 0
        q_rstd = tl.rsqrt(tl.sum(q * q, 0) / D + eps)
        k_rstd = tl.rsqrt(tl.sum(k * k, 0) / D + eps)
        q = _head_norm(q, q_rstd, QNORM, d, d_ok, dtype)
        k = _head_norm(k, k_rstd, KNORM, d, d_ok, dtype)
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
        if QK_NORM:
            q_partner = _head_norm(q_partner, q_rstd, QNORM, partner, rotated, dtype)
            k_partner = _head_norm(k_partner, k_rstd, KNORM, partner, rotated, dtype)
        q = _round(_rotate(q, q_partner, d, cos, sin, ROT, INTERLEAVED), dtype)
        k = _round(_rotate(k, k_partner, d, cos, sin, ROT, INTERLEAVED), dtype)
    if KVQ != "none":
        kv_scale = tl.load(KV_SCALE).to(tl.float32)
        k = _fake_quant(k, kv_scale, KVQ, dtype)
        v = _fake_quant(v, kv_scale, KVQ, dtype)
    cache = KV + b * kv_batch + g * kv_head
    if (h % GROUP == 0) & (split == 0):
        tl.store(cache + slot * D + d, k.to(KV.dtype.element_ty), mask=d_ok)
        tl.store(cache + kv_part + slot * D + d, v.to(KV.dtype.element_ty), mask=d_ok)
    q = q * SCALE
    # split 0 seeds the online softmax with the new position (always visible), the others start empty;
    # then each walks its share of the cached keys pad .. slot - 1
    first = split == 0
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(ALIBI + h)
    own = _softcap(tl.sum(q * k, 0), SOFTCAP) + _round(slope * (slot - pad).to(tl.float32), dtype)
    m = tl.where(first, own, float("-inf"))
    denom = tl.where(first, 1.0, 0.0)
    acc = tl.where(first, v, 0.0)
    lo = tl.maximum(tl.maximum(split * CHUNK, pad), slot - WINDOW + 1)
    hi = tl.minimum(split * CHUNK + CHUNK, slot)
    for start in range(lo, hi, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        valid = s < hi
        tile = valid[:, None] & d_ok[None, :]
        keys = tl.load(cache + s[:, None] * D + d[None, :], mask=tile, other=0.0).to(tl.float32)
        scores = _softcap(tl.sum(keys * q[None, :], 1), SOFTCAP)
        if HAS_ALIBI:
            scores += _round(slope * (s - pad).to(tl.float32), dtype)
        scores = tl.where(valid, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new)
        values = tl.load(cache + kv_part + s[:, None] * D + d[None, :], mask=tile, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * values, 0)
        denom = denom * alpha + tl.sum(p, 0)
        m = m_new
    if SPLITS == 1:
        out = _quant_output(acc / denom, h * D + d, HEADS * D, OPRE, OXS, OAQ, OHAS_PRE, dtype)
        tl.store(OUT + (b * HEADS + h) * D + d, out.to(OUT.dtype.element_ty), mask=d_ok)
    else:
        part = PARTS + ((b * HEADS + h) * SPLITS + split) * (BD + 2)  # [max, denominator, BD sums]
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
    OXS=None,
    OPRE=None,
    OAQ: tl.constexpr = "none",
    OHAS_PRE: tl.constexpr = False,
):
    """OUT[b, h] from the SPLITS partials of ``decode_attention_kernel``, each rescaled to the common max (OAQ:
    quantized as there). One program per (head, sequence)."""
    if PDL:  # see gemv_kernel
        gdc_launch_dependents()
        gdc_wait()
    h = tl.program_id(0) + tl.program_id(1) * HEADS  # (sequence, head) as one index
    d = tl.arange(0, BD)
    parts = PARTS + (h * SPLITS + tl.arange(0, SPLITS)) * (BD + 2)
    m = tl.load(parts)
    weight = tl.exp(m - tl.max(m, 0))  # an empty split (max -inf) weighs 0
    denom = tl.sum(tl.load(parts + 1) * weight, 0)
    acc = tl.sum(tl.load(parts[:, None] + 2 + d[None, :]) * weight[:, None], 0)
    dtype: tl.constexpr = OUT.dtype.element_ty
    out = _quant_output(acc / denom, tl.program_id(0) * D + d, HEADS * D, OPRE, OXS, OAQ, OHAS_PRE, dtype)
    tl.store(OUT + h * D + d, out.to(dtype), mask=d < D)
