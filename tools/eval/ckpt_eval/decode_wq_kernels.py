"""Triton GEMVs of the fused decode step (``fused_decode``) reading weight-only int8 / int4 and INT4 AWQ weights
as packed codes, with the fp16 GEMV's RMSNorm prologue and bias / gated activation / residual epilogue: one
input vector (``packed_gemv``) or a batch of them, each weight read once for all (``packed_gemv_batch``).

The kernel reads ``quantized.PackedWeight``: codes in the AWQ row layout (``[out, in]`` int8, or ``[out/2, in]``
int4 with rows 2j, 2j+1 in the low, high nibble of each byte), a float32 scale per row and group of inputs, and
for AWQ the pre-quant scale, which multiplies the input (float32) as the checkpoint says. The int4 nibbles are
unpacked in registers (shifts of the sign-extended byte); products and sums are float32. Row r's sum is
``sum_k q[r, k] * s[r, k // group] * x[k]``: per channel the scale multiplies the row's sum, per group each
code. The torch backend multiplies the dequantized weight (rounded to the model dtype); in float32 the two
agree to rounding (``tests/eval/test_fused_decode_wq.py``).

Imported only where triton is installed; with ``TRITON_INTERPRET=1`` set before the import the kernel runs on
CPU tensors (tests).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .decode_kernels import _activate, _batch_columns, _load_normed, _norm_stats, _round
from .quantized import PackedWeight


@triton.jit
def _load_input(X, cols, K, NORM, scale, HAS_NORM: tl.constexpr, dtype: tl.constexpr):
    """Elements ``cols`` of the input vector (float32), RMS-normalized as the fp16 GEMV does when HAS_NORM:
    times ``scale`` (1 / rms), rounded to the model dtype, times NORM, rounded."""
    x = tl.load(X + cols, mask=cols < K, other=0.0).to(tl.float32)
    if HAS_NORM:
        g = tl.load(NORM + cols, mask=cols < K, other=0.0).to(tl.float32)
        x = _round(_round(x * scale, dtype) * g, dtype)
    return x


@triton.jit
def _unpack(b, BITS: tl.constexpr, HIGH: tl.constexpr):
    """Signed codes (float32) of the int8 bytes ``b``: the byte itself (BITS 8), or its low / high nibble (HIGH)
    sign-extended (BITS 4)."""
    v = b.to(tl.int32)
    if BITS == 8:
        return v.to(tl.float32)
    elif HIGH:
        return ((v << 24) >> 28).to(tl.float32)
    else:
        return ((v << 28) >> 28).to(tl.float32)


@triton.jit
def _scaled_codes(b, S, rows, row_ok, k0, KG, K, GS: tl.constexpr, NG: tl.constexpr, BITS: tl.constexpr,
                  HIGH: tl.constexpr, PER_GROUP: tl.constexpr, EACH: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """Codes of ``b`` [BR, NG, GS] (columns k0 ..) for output ``rows``, times their group's scale when PER_GROUP
    (one [BR, NG] load; EACH: a group that is no power of two, one scale load per code)."""
    q = _unpack(b, BITS, HIGH)
    if PER_GROUP:
        g = tl.arange(0, NG)
        if EACH:
            cols = k0 + g[:, None] * GS + tl.arange(0, GS)[None, :]
            ok = row_ok[:, None, None] & (cols < K)[None, :, :]
            s = tl.load(S + rows[:, None, None] * KG + (cols // GROUP)[None, :, :], mask=ok, other=0.0)
            q = q * s
        else:
            ok = row_ok[:, None] & (k0 // GS + g < KG)[None, :]
            s = tl.load(S + rows[:, None] * KG + (k0 // GS + g)[None, :], mask=ok, other=0.0)
            q = q * s[:, :, None]
    return q


@triton.jit
def _row_sums(acc, S, rows, row_ok, KG, PER_GROUP: tl.constexpr):
    y = tl.sum(tl.sum(acc, 2), 1)
    if not PER_GROUP:
        y *= tl.load(S + rows * KG, mask=row_ok, other=0.0)
    return y


@triton.jit
def _finish(y, y_gate, rows, row_ok, out, out_ok, N, BIAS, RES, Y, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
            GATED: tl.constexpr, ACT: tl.constexpr, dtype: tl.constexpr):  # fmt: skip
    """The fp16 GEMV's epilogue (``decode_kernels.gemv_kernel``): bias, model-dtype rounding, activation (gated:
    ``act(fc) * gate``), residual, store. ``rows``: the output rows (bias); ``out``: where in Y and RES (the
    batch kernel's [batch, rows] offsets; one vector: ``rows`` again)."""
    if HAS_BIAS:
        y += tl.load(BIAS + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = _round(y, dtype)
    if GATED:
        if HAS_BIAS:
            y_gate += tl.load(BIAS + N + rows, mask=row_ok, other=0.0).to(tl.float32)
        y = _round(_round(_activate(y, ACT), dtype) * _round(y_gate, dtype), dtype)
    elif ACT != "none":
        y = _round(_activate(y, ACT), dtype)
    if HAS_RES:
        y += tl.load(RES + out, mask=out_ok, other=0.0).to(tl.float32)
    tl.store(Y + out, y.to(dtype).to(Y.dtype.element_ty), mask=out_ok)


@triton.jit
def packed_gemv_kernel(
    X,
    NORM,
    W,
    S,
    PRE,
    WG,
    SG,
    PREG,
    BIAS,
    Y,
    RES,
    N,
    K,
    KG,
    eps,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    PER_GROUP: tl.constexpr,
    EACH: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_PRE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    GATED: tl.constexpr,
    ACT: tl.constexpr,
    PDL: tl.constexpr,
    BR: tl.constexpr,
    GS: tl.constexpr,
    NG: tl.constexpr,
):
    """``Y[n] = act(W @ (norm(X) * PRE) + BIAS)[n] (+ RES[n])`` for rows n < N; one vector X [K].

    W: int8 codes [N, K] (BITS 8) or packed int4 [N/2, K] (BITS 4: row 2j low nibble, 2j+1 high); S: float32
    scales [N, KG] (KG = K / GROUP groups; per channel KG = 1). PER_GROUP: the scales multiply each code, else the
    row's sum. HAS_PRE: the input times PRE [K] (float32; AWQ). GATED: ``Y = act(fc . x) * (gate . x)`` with the
    gate's codes, scales and pre-quant scale at WG, SG, PREG; BIAS then holds [fc; gate] (2N). A program covers
    BR rows of bytes (BR or 2 BR output rows) and walks K in steps of NG x GS columns (GS: the group, or per
    channel the whole step). HAS_NORM, ACT, HAS_RES, PDL: as ``decode_kernels.gemv_kernel``.
    """
    dtype: tl.constexpr = X.dtype.element_ty
    BK: tl.constexpr = NG * GS
    if PDL:
        gdc_launch_dependents()
    br = tl.program_id(0) * BR + tl.arange(0, BR)
    NB = N // (8 // BITS)  # rows of bytes
    br_ok = br < NB
    cols = tl.arange(0, NG)[:, None] * GS + tl.arange(0, GS)[None, :]  # [NG, GS]
    w_off = br.to(tl.int64)[:, None, None] * K + cols[None, :, :]  # 64-bit: vocab x hidden may pass 2**31
    w_mask = br_ok[:, None, None] & (cols < K)[None, :, :]
    b = tl.load(W + w_off, mask=w_mask, other=0, eviction_policy="evict_first")  # before the wait (PDL)
    if PDL:
        gdc_wait()  # X and RES are written by earlier kernels of the step
    scale = 1.0
    if HAS_NORM:
        squares = tl.zeros((NG, GS), tl.float32)
        for k0 in range(0, K, BK):
            xs = tl.load(X + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            squares += xs * xs
        scale = tl.rsqrt(tl.sum(tl.sum(squares, 1), 0) / K + eps)
    lo_rows = br
    if BITS == 4:
        lo_rows = 2 * br
    hi_rows = lo_rows + 1
    acc_lo = tl.zeros((BR, NG, GS), tl.float32)
    acc_hi = tl.zeros((BR, NG, GS), tl.float32)
    gate_lo = tl.zeros((BR, NG, GS), tl.float32)
    gate_hi = tl.zeros((BR, NG, GS), tl.float32)
    for k0 in range(0, K, BK):
        if k0 > 0:
            w_mask = br_ok[:, None, None] & (k0 + cols < K)[None, :, :]
            b = tl.load(W + w_off + k0, mask=w_mask, other=0, eviction_policy="evict_first")
        x_in = _load_input(X, k0 + cols, K, NORM, scale, HAS_NORM, dtype)
        x = x_in
        if HAS_PRE:
            x = x_in * tl.load(PRE + k0 + cols, mask=k0 + cols < K, other=0.0)
        x = x[None, :, :]
        acc_lo += _scaled_codes(b, S, lo_rows, br_ok, k0, KG, K, GS, NG, BITS, False, PER_GROUP, EACH, GROUP) * x
        if BITS == 4:
            acc_hi += _scaled_codes(b, S, hi_rows, br_ok, k0, KG, K, GS, NG, BITS, True, PER_GROUP, EACH, GROUP) * x
        if GATED:
            bg = tl.load(WG + w_off + k0, mask=w_mask, other=0, eviction_policy="evict_first")
            xg = x_in
            if HAS_PRE:
                xg = x_in * tl.load(PREG + k0 + cols, mask=k0 + cols < K, other=0.0)
            xg = xg[None, :, :]
            gate_lo += (
                _scaled_codes(bg, SG, lo_rows, br_ok, k0, KG, K, GS, NG, BITS, False, PER_GROUP, EACH, GROUP) * xg
            )
            if BITS == 4:
                gate_hi += (
                    _scaled_codes(bg, SG, hi_rows, br_ok, k0, KG, K, GS, NG, BITS, True, PER_GROUP, EACH, GROUP) * xg
                )
    y = _row_sums(acc_lo, S, lo_rows, br_ok, KG, PER_GROUP)
    y_gate = y
    if GATED:
        y_gate = _row_sums(gate_lo, SG, lo_rows, br_ok, KG, PER_GROUP)
    _finish(y, y_gate, lo_rows, br_ok, lo_rows, br_ok, N, BIAS, RES, Y, HAS_BIAS, HAS_RES, GATED, ACT, dtype)
    if BITS == 4:
        y = _row_sums(acc_hi, S, hi_rows, br_ok, KG, PER_GROUP)
        if GATED:
            y_gate = _row_sums(gate_hi, SG, hi_rows, br_ok, KG, PER_GROUP)
        _finish(y, y_gate, hi_rows, br_ok, hi_rows, br_ok, N, BIAS, RES, Y, HAS_BIAS, HAS_RES, GATED, ACT, dtype)


@triton.jit
def _codes_times_scales(b, S, rows, row_ok, cols, K, KG, BITS: tl.constexpr, HIGH: tl.constexpr,
                        PER_GROUP: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """Codes of the bytes ``b`` [BR, BK] for output ``rows`` (float32), each times its group's scale when
    PER_GROUP (any group size: one scale load per code, from a small array that stays in cache)."""
    q = _unpack(b, BITS, HIGH)
    if PER_GROUP:
        ok = row_ok[:, None] & (cols < K)[None, :]
        q *= tl.load(S + rows[:, None] * KG + (cols // GROUP)[None, :], mask=ok, other=0.0)
    return q


@triton.jit
def _batch_products(x, b, S, rows, row_ok, cols, K, KG, BITS: tl.constexpr, HIGH: tl.constexpr,
                    PER_GROUP: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """The products ``x[i, k] * codes(b)[r, k]`` [BB, BR, BK] in float32 on the CUDA cores, summed over k by the
    caller once at the end (a sum across threads at every step cost more instructions than the products)."""
    q = _codes_times_scales(b, S, rows, row_ok, cols, K, KG, BITS, HIGH, PER_GROUP, GROUP)
    return x[:, None, :] * q[None, :, :]


@triton.jit
def packed_gemv_batch_kernel(
    X,
    NORM,
    W,
    S,
    PRE,
    WG,
    SG,
    PREG,
    BIAS,
    Y,
    RES,
    N,
    K,
    KG,
    eps,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    PER_GROUP: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_PRE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    GATED: tl.constexpr,
    ACT: tl.constexpr,
    PDL: tl.constexpr,
    B: tl.constexpr,
    BB: tl.constexpr,
    BR: tl.constexpr,
    BK: tl.constexpr,
):
    """``packed_gemv_kernel`` for a batch: ``Y[b] = act(W @ (norm(X[b]) * PRE) + BIAS) (+ RES[b])`` for the B rows
    of X [B, K] (Y, RES: [B, N]). Each program reads its BR rows of code bytes once per step of BK columns and
    multiplies them by all B inputs ([BB, BK], BB: B rounded up to a power of two; rows past B read and write
    nothing), float32 on the CUDA cores. Norm statistics are per input row; the arguments are
    ``packed_gemv_kernel``'s."""
    dtype: tl.constexpr = X.dtype.element_ty
    if PDL:
        gdc_launch_dependents()
    br = tl.program_id(0) * BR + tl.arange(0, BR)
    NB = N // (8 // BITS)  # rows of bytes
    br_ok = br < NB
    cols = tl.arange(0, BK)
    batch = tl.arange(0, BB)
    in_batch = batch < B
    x_rows = X + batch[:, None] * K
    x_cols = _batch_columns(cols, in_batch, K)  # [BB, BK]: rows past B read nothing
    w_off = br.to(tl.int64)[:, None] * K + cols[None, :]  # 64-bit: vocab x hidden may pass 2**31
    w_mask = br_ok[:, None] & (cols < K)[None, :]
    b = tl.load(W + w_off, mask=w_mask, other=0, eviction_policy="evict_first")  # before the wait (PDL)
    if PDL:
        gdc_wait()  # X and RES are written by earlier kernels of the step
    mean, scale = 0.0, 1.0
    if HAS_NORM:  # RMSNorm statistics of each input row, as the fp16 batch GEMV takes them
        mean, scale = _norm_stats(x_rows, x_cols, K, eps, False, BK)
    lo_rows = br
    if BITS == 4:
        lo_rows = 2 * br
    hi_rows = lo_rows + 1
    acc_lo = tl.zeros((BB, BR, BK), tl.float32)
    acc_hi = tl.zeros((BB, BR, BK), tl.float32)
    gate_lo = tl.zeros((BB, BR, BK), tl.float32)
    gate_hi = tl.zeros((BB, BR, BK), tl.float32)
    for k0 in range(0, K, BK):
        c = k0 + cols
        if k0 > 0:
            w_mask = br_ok[:, None] & (c < K)[None, :]
            b = tl.load(W + w_off + k0, mask=w_mask, other=0, eviction_policy="evict_first")
        x_in = _load_normed(x_rows, k0 + x_cols, K, NORM, NORM, mean, scale, HAS_NORM, False, dtype)
        x = x_in
        if HAS_PRE:
            x = x_in * tl.load(PRE + c, mask=c < K, other=0.0)[None, :]
        acc_lo += _batch_products(x, b, S, lo_rows, br_ok, c, K, KG, BITS, False, PER_GROUP, GROUP)
        if BITS == 4:
            acc_hi += _batch_products(x, b, S, hi_rows, br_ok, c, K, KG, BITS, True, PER_GROUP, GROUP)
        if GATED:
            bg = tl.load(WG + w_off + k0, mask=w_mask, other=0, eviction_policy="evict_first")
            xg = x_in
            if HAS_PRE:
                xg = x_in * tl.load(PREG + c, mask=c < K, other=0.0)[None, :]
            gate_lo += _batch_products(xg, bg, SG, lo_rows, br_ok, c, K, KG, BITS, False, PER_GROUP, GROUP)
            if BITS == 4:
                gate_hi += _batch_products(xg, bg, SG, hi_rows, br_ok, c, K, KG, BITS, True, PER_GROUP, GROUP)
    out_ok = in_batch[:, None] & br_ok[None, :]
    y = _batch_row_sums(acc_lo, S, lo_rows, br_ok, KG, PER_GROUP)
    y_gate = y
    if GATED:
        y_gate = _batch_row_sums(gate_lo, SG, lo_rows, br_ok, KG, PER_GROUP)
    out = batch[:, None] * N + lo_rows[None, :]
    _finish(y, y_gate, lo_rows[None, :], br_ok[None, :], out, out_ok, N, BIAS, RES, Y, HAS_BIAS, HAS_RES, GATED,
            ACT, dtype)  # fmt: skip
    if BITS == 4:
        y = _batch_row_sums(acc_hi, S, hi_rows, br_ok, KG, PER_GROUP)
        if GATED:
            y_gate = _batch_row_sums(gate_hi, SG, hi_rows, br_ok, KG, PER_GROUP)
        out = batch[:, None] * N + hi_rows[None, :]
        _finish(y, y_gate, hi_rows[None, :], br_ok[None, :], out, out_ok, N, BIAS, RES, Y, HAS_BIAS, HAS_RES,
                GATED, ACT, dtype)  # fmt: skip


@triton.jit
def _batch_row_sums(acc, S, rows, row_ok, KG, PER_GROUP: tl.constexpr):
    """[BB, BR] sums of the products [BB, BR, BK], times each row's scale per channel."""
    y = tl.sum(acc, 2)
    if not PER_GROUP:
        y *= tl.load(S + rows * KG, mask=row_ok, other=0.0)[None, :]
    return y


def packed_blocks(weight: PackedWeight) -> dict:
    """Launch parameters: 4 rows of bytes a program (int4: 8 output rows), steps of up to 1024 columns (a whole
    number of groups), 8 warps: the fp16 GEMV's settings (``fused_decode.gemv_blocks``), not tuned for packed
    weights yet (bench/fused_decode_wq.py times alternatives)."""
    k, group = weight.codes.shape[1], weight.group
    step = min(1024, 1 << max(0, (k - 1).bit_length()))
    if weight.per_group and group & (group - 1) == 0 and group <= step:
        return {"BR": 4, "GS": group, "NG": step // group, "EACH": False, "num_warps": 8}
    return {"BR": 4, "GS": step, "NG": 1, "EACH": weight.per_group, "num_warps": 8}


def packed_batch_blocks(weight: PackedWeight, batch: int) -> dict:
    """Launch parameters of ``packed_gemv_batch_kernel``: 4 rows of bytes a program, and a column step small
    enough that the [BB, BR, BK] products stay in registers (untuned)."""
    bb = triton.next_power_of_2(batch)
    k = triton.next_power_of_2(weight.codes.shape[1])
    return {"BB": bb, "BR": 4, "BK": max(16, min(k, 4096 // (4 * bb))), "num_warps": 4}


def _launch(kernel, grid_rows: int, x, weights: list[PackedWeight], y, eps: float, norm, bias, res, act: str,
            pdl: bool, blocks: dict, **extra) -> None:  # fmt: skip
    """One launch of a packed GEMV kernel over ``grid_rows`` rows of bytes: the arguments both kernels take."""
    w, g = weights[0], weights[-1]
    dummy = w.scale
    launch = {"launch_pdl": True} if pdl else {}
    kernel[(math.ceil(grid_rows / blocks["BR"]),)](
        x, dummy if norm is None else norm, w.codes, w.scale, dummy if w.prequant is None else w.prequant,
        g.codes, g.scale, dummy if g.prequant is None else g.prequant, dummy if bias is None else bias, y,
        y if res is None else res, w.rows, w.codes.shape[1], w.scale.shape[1], eps, BITS=w.bits, GROUP=w.group,
        PER_GROUP=w.per_group, HAS_NORM=norm is not None, HAS_PRE=w.prequant is not None, HAS_BIAS=bias is not None,
        HAS_RES=res is not None, GATED=len(weights) > 1, ACT=act, PDL=pdl, **blocks, **extra, **launch,
    )  # fmt: skip


def packed_gemv_batch(x, weights: list[PackedWeight], y, *, eps: float, norm=None, bias=None, res=None,
                      act="none", pdl: bool = False, blocks: dict | None = None) -> None:  # fmt: skip
    """``packed_gemv`` for the rows of ``x`` [B, K] (``y``, ``res``: [B, N]), each weight read once for all rows."""
    w = weights[0]
    k = w.codes.shape[1]
    if x.dim() != 2 or x.shape[1] != k or not x.is_contiguous():
        raise ValueError(f"packed batch GEMV: contiguous inputs [batch, {k}], got {tuple(x.shape)}")
    blocks = dict(blocks or packed_batch_blocks(w, x.shape[0]))
    _launch(packed_gemv_batch_kernel, w.codes.shape[0], x, weights, y, eps, norm, bias, res, act, pdl, blocks,
            B=x.shape[0])  # fmt: skip


def packed_gemv(x, weights: list[PackedWeight], y, *, eps: float, norm=None, bias=None, res=None, act="none",
                pdl: bool = False, blocks: dict | None = None) -> None:  # fmt: skip
    """``y = act(W @ norm(x) + bias) (+ res)`` for one input vector; ``weights``: [W], or [fc, gate] (gated)."""
    w = weights[0]
    k = w.codes.shape[1]
    if x.numel() != k:
        raise ValueError(f"packed GEMV: one input vector of {k} (batch 1), got {tuple(x.shape)}")
    blocks = dict(blocks or packed_blocks(w))
    _launch(packed_gemv_kernel, w.codes.shape[0], x, weights, y, eps, norm, bias, res, act, pdl, blocks)
