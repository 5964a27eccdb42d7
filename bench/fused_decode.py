"""Launch-parameter sweep of the fused decode kernels (``ckpt_eval.decode_kernels``) on this GPU.

    python bench/fused_decode.py [--pdl] [--positions 96 1024]
    python bench/fused_decode.py --batch 8 [16] [--pdl]     (the batched GEMV only)
    python bench/fused_decode.py --fp8 [--pdl]              (the batch-1 GEMV with FP8 weights, only)

TinyLlama-1.1B shapes, fp16, batch 1 (the fused step's case). Each GEMV shape is timed as 22 launches over
distinct weights captured in one CUDA graph (nothing stays in L2, as in a decode step), for every
(BN, BK, warps) candidate, and the best few are printed with the weight-read bandwidth they reach;
``ckpt_eval.fused_decode.gemv_blocks`` holds what this sweep found. Then the decode-attention kernel at a
few cache lengths, block sizes and splits. ``--pdl`` launches as the fused step does on sm90+.

``--batch B``: the tensor-core form of ``gemv_batch_kernel`` (what batches of 2-16 run) for the same shapes at
batch B, over tiles (BN, BK), warps, the hand-prefetched loop against triton's pipelined one at 3-4 stages, and
split-K (the K columns over 1-8 programs per row tile);
``ckpt_eval.fused_decode.gemv_batch_blocks`` takes the winner, ``FusedDecoder(batch_tuning=...)`` and
``bench/fused_batch.py --tuning`` try one end to end.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch
from gemv_decode import LAYERS, graph_time_us

SHAPES = {  # name: (rows, cols, fused extras)
    "qkv (+norm)": (2560, 2048, dict(HAS_NORM=True)),
    "dense (+res)": (2048, 2048, dict(HAS_RES=True)),
    "fc+gate (+norm, silu)": (5632, 2048, dict(HAS_NORM=True, GATED=True, ACT="silu")),
    "proj (+res)": (2048, 5632, dict(HAS_RES=True)),
    "lm_head (+norm)": (32000, 2048, dict(HAS_NORM=True)),
}


def sweep_gemv(top: int, pdl: bool, fp8: bool = False) -> None:
    """``gemv_kernel`` per shape over (BN, BK, warps). ``fp8``: e4m3 weight codes with a scale per row, as an
    FP8 checkpoint's linears run: the normalized inputs (qkv, fc/gate) quantized to e4m3 in the kernel
    (per-tensor scale), the others arriving quantized (``fused_decode.producer_quant``); wider row tiles are
    tried too, since each program quantizes its input tiles once for all of its rows."""
    from ckpt_eval import decode_kernels as dk
    from ckpt_eval.fused_decode import gemv_blocks, triton_next_pow2

    for name, (n, k, extras) in SHAPES.items():
        gated = extras.get("GATED", False)
        layers = 4 if n > 10000 else LAYERS
        rows = 2 * n if gated else n
        wtype = torch.float8_e4m3fn if fp8 else torch.float16
        weights = [(torch.randn(rows, k, device="cuda", dtype=torch.float16) * 0.02).to(wtype) for _ in range(layers)]
        x = torch.randn(k, device="cuda", dtype=torch.float16)
        norm = torch.ones(k, device="cuda", dtype=torch.float16)
        y = torch.zeros(n, device="cuda", dtype=torch.float16)
        flags = dict(HAS_NORM=False, HAS_BIAS=False, HAS_RES=False, GATED=False, ACT="none", PDL=pdl) | extras
        ws = torch.full((rows,), 0.01, device="cuda")  # FP8: the weight scale of each row
        xs = torch.tensor([0.02, 0.02], device="cuda")  # and the input's (fc and gate)
        if fp8:  # the step quantizes an unnormalized input where it is written (fused_decode.producer_quant)
            flags |= dict(WQ=True, AQ="fp8" if flags["HAS_NORM"] else "none", HAS_PRE=False, SPLIT_ACT=False)

        def launch(cfg, w, n=n, k=k, x=x, norm=norm, y=y, flags=flags, ws=ws, xs=xs, cast=False):
            bn, bk, warps = cfg
            dk.gemv_kernel[(math.ceil(n / bn),)](
                x, norm, w, w, y, y, ws if fp8 else w, xs if fp8 else w, w, n, k, 1e-5, BN=bn, BK=bk,
                num_warps=warps, launch_pdl=pdl, CAST=cast, **flags,
            )  # fmt: skip

        results = []
        # BK 2048: a K of 2048 read whole before the PDL wait (fewer instructions a byte: bench/kernel_sass.py)
        for cfg in itertools.product((2, 4, 8, 16, 32) if fp8 else (2, 4, 8, 16), (256, 512, 1024, 2048), (4, 8)):
            if cfg[1] > triton_next_pow2(k):
                continue
            try:
                us = graph_time_us(lambda cfg=cfg, weights=weights: [launch(cfg, w) for w in weights]) / layers
            except Exception as err:  # a config the compiler refuses (registers, shared memory)
                print(f"  {name} {cfg}: {type(err).__name__}")
                continue
            results.append((us, cfg))
        results.sort()
        d = gemv_blocks(k, fp8, gated)
        current = (d["BN"], d["BK"], d["num_warps"])
        now = next((us for us, cfg in results if cfg == current), float("nan"))
        nbytes = weights[0].numel() * weights[0].element_size()
        print(f"{name} [{n}x{k}]{' fp8' if fp8 else ''}: in use {current} {now:.2f} us ({nbytes / now / 1e6:.2f} TB/s)")
        for us, (bn, bk, warps) in results[:top]:
            print(f"    BN={bn:<3} BK={bk:<5} warps={warps}  {us:6.2f} us  {nbytes / us / 1e6:.2f} TB/s")
        for _, cfg in results[:3] if fp8 and flags["AQ"] == "fp8" else ():  # e4m3 rounding by the GPU's conversion
            launch(cfg, weights[0])
            want = y.clone()
            launch(cfg, weights[0], cast=True)
            same = (
                "same outputs" if torch.equal(y, want) else f"DIFFERENT outputs ({(y - want).abs().max().item():.3g})"
            )
            us = graph_time_us(lambda cfg=cfg, weights=weights: [launch(cfg, w, cast=True) for w in weights]) / layers
            print(f"    cast to e4m3 {cfg}: {us:6.2f} us  {nbytes / us / 1e6:.2f} TB/s, {same}")


BATCH_CANDIDATES = [  # (BN, BK, warps, prefetch by hand, num_stages, split-K)
    *itertools.product((16, 32, 64), (128, 256), (4,), (False,), (4,), (1, 2, 4, 8)),
    *itertools.product((16, 32), (128,), (4,), (True,), (3,), (1, 4)),
    *itertools.product((64, 128), (128,), (8,), (False,), (3,), (1, 4)),
]


def sweep_batch_gemv(batch: int, top: int, pdl: bool) -> None:
    """``gemv_batch_kernel`` on tensor cores at ``batch`` rows, per shape: the launch in use, then the best
    candidates of ``BATCH_CANDIDATES``, with the weight-read bandwidth each reaches."""
    from ckpt_eval import decode_kernels as dk
    from ckpt_eval.fused_decode import gemv_batch_blocks

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, (n, k, extras) in SHAPES.items():
        if n > 10000:
            continue  # lm_head: a bandwidth-bound GEMM outside the layers, like the batch-1 sweep's
        gated = extras.get("GATED", False)
        rows = 2 * n if gated else n
        weights = [torch.randn(rows, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(LAYERS)]
        x = torch.randn(batch, k, device="cuda", dtype=torch.float16)
        norm = torch.ones(k, device="cuda", dtype=torch.float16)
        y = torch.zeros(batch, n, device="cuda", dtype=torch.float16)
        res = torch.randn(batch, n, device="cuda", dtype=torch.float16)
        part = torch.empty(8 * 2 * 16 * n, device="cuda", dtype=torch.float32)  # split-K partials (BB <= 16)
        count = torch.zeros(n, device="cuda", dtype=torch.int32)
        flags = dict(HAS_NORM=False, HAS_BIAS=False, HAS_RES=False, GATED=False, ACT="none", PDL=pdl) | extras
        base = gemv_batch_blocks(n, k, batch, True, sms)

        def launch(blocks, w, n=n, k=k, x=x, norm=norm, y=y, res=res, flags=flags, part=part, count=count):
            dk.gemv_batch_kernel[(math.ceil(n / blocks["BN"]), blocks["SPLIT"])](
                x, norm, w, w, y, res, w, w, w, n, k, 1e-5, B=batch, DOT=True, PRECISION="tf32", launch_pdl=pdl,
                PART=part, COUNT=count, **flags, **blocks,
            )  # fmt: skip

        def timed(blocks, weights=weights, launch=launch):
            return graph_time_us(lambda: [launch(blocks, w) for w in weights]) / LAYERS

        nbytes = weights[0].numel() * 2
        launch(base | {"SPLIT": 1}, weights[-1])
        want = y.clone()  # what every candidate's last launch (the last weight) must write
        now = timed(base)
        print(f"{name} [{n}x{k}] batch {batch}: in use {base} {now:.2f} us ({nbytes / now / 1e6:.2f} TB/s)")
        rule = gemv_batch_blocks(n, k, batch, True, sms, split_k=True)
        if rule != base:
            us = timed(rule)
            print(f"    split-K rule (SPLIT_K): SPLIT={rule['SPLIT']}  {us:6.2f} us  {nbytes / us / 1e6:.2f} TB/s")
        results = []
        for bn, bk, warps, prefetch, stages, split in BATCH_CANDIDATES:
            cand = (bn, bk, warps, prefetch, stages, split)
            if split > 1 and k < 2 * bk * split:
                continue  # a split of less than two tiles
            blocks = base | dict(BN=bn, BK=bk, num_warps=warps, PREFETCH=prefetch, num_stages=stages, SPLIT=split)
            try:
                results.append((timed(blocks), cand))
                if not torch.allclose(y, want, rtol=1e-2, atol=1e-2):
                    print(f"  {name} {cand}: WRONG, max error {(y - want).abs().max().item():.3g}")
            except Exception as err:  # a config the compiler refuses (registers, shared memory)
                print(f"  {name} {cand}: {type(err).__name__}")
        results.sort()
        if extras.get("HAS_NORM") and results:  # the best candidates again, the norm statistics read 512 wide
            for _, cand in results[:3]:
                bn, bk, warps, prefetch, stages, split = cand
                blocks = base | dict(BN=bn, BK=bk, num_warps=warps, PREFETCH=prefetch, num_stages=stages,
                                     SPLIT=split, STATS_BK=512)  # fmt: skip
                us = timed(blocks)
                ok = "" if torch.allclose(y, want, rtol=1e-2, atol=1e-2) else "  WRONG"
                print(f"    {cand} with STATS_BK=512: {us:6.2f} us  {nbytes / us / 1e6:.2f} TB/s{ok}")
        for us, (bn, bk, warps, prefetch, stages, split) in results[:top]:
            print(
                f"    BN={bn:<3} BK={bk:<4} warps={warps} prefetch={prefetch!s:<5} stages={stages} split={split}"
                f"  {us:6.2f} us  {nbytes / us / 1e6:.2f} TB/s"
            )


def sweep_attention(positions: list[int], pdl: bool) -> None:
    """Decode attention (+ the combine kernel when split) per layer, at each cache length: the settings
    ``attention_blocks`` picks, then the best few of a sweep."""
    from ckpt_eval import decode_kernels as dk
    from ckpt_eval.fused_decode import attention_blocks

    heads, kv_heads, d = 32, 4, 64
    for length in positions:
        caches = [torch.randn(2, 1, kv_heads, length + 8, d, device="cuda", dtype=torch.float16) for _ in range(LAYERS)]
        qkv = torch.randn((heads + 2 * kv_heads) * d, device="cuda", dtype=torch.float16)
        out = torch.empty(heads * d, device="cuda", dtype=torch.float16)
        parts = torch.empty(heads * 64 * (d + 2), device="cuda", dtype=torch.float32)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, device="cuda").float() / d))
        slot = torch.tensor([length], device="cuda")
        pad = torch.zeros(1, dtype=torch.long, device="cuda")

        def launch(kv, block_s, warps, splits, qkv=qkv, out=out, parts=parts, inv_freq=inv_freq, slot=slot, pad=pad):
            chunk = math.ceil(kv.shape[3] / splits)
            dk.decode_attention_kernel[(heads, splits, 1)](
                qkv, kv, out, inv_freq, slot, pad, parts, qkv, chunk, kv.shape[3] + 1, kv.stride(0), kv.stride(1),
                kv.stride(2),
                HEADS=heads, KV_HEADS=kv_heads, D=d, BD=d, ROT=d, INTERLEAVED=False, BLOCK_S=block_s,
                SPLITS=splits, SCALE=1 / math.sqrt(d), PDL=pdl, num_warps=warps, launch_pdl=pdl,
            )  # fmt: skip
            if splits > 1:
                dk.attention_combine_kernel[(heads,)](
                    parts, out, HEADS=heads, D=d, BD=d, SPLITS=splits, PDL=pdl, num_warps=1, launch_pdl=pdl
                )

        def timed(cfg, caches=caches, launch=launch):
            return graph_time_us(lambda: [launch(kv, *cfg) for kv in caches]) / LAYERS

        chosen = attention_blocks(length + 8)
        cfg = (chosen["BLOCK_S"], chosen["num_warps"], chosen["SPLITS"])
        print(f"decode attention, {length} cached positions: in use {cfg} {timed(cfg):6.2f} us")
        timings = []
        for cfg in itertools.product((64, 128, 256), (2, 4), (1, 2, 4, 8, 16, 32)):
            if cfg[2] == 1 or math.ceil((length + 8) / cfg[2]) >= 32:
                timings.append((timed(cfg), cfg))
        timings.sort()
        for us, (block_s, warps, splits) in timings[:4]:
            print(f"    BLOCK_S={block_s:<4} warps={warps} splits={splits:<3} {us:6.2f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, nargs="+", default=[96, 1024, 4096])
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--skip_gemv", action="store_true")
    ap.add_argument("--pdl", action="store_true", help="launch with programmatic dependent launch (sm90+)")
    ap.add_argument("--batch", type=int, nargs="+", help="sweep the batched GEMV at these batch sizes, only")
    ap.add_argument("--fp8", action="store_true", help="sweep the batch-1 GEMV with FP8 weights and inputs, only")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "PDL" if args.pdl else "")
    if args.fp8:
        sweep_gemv(args.top, args.pdl, fp8=True)
        return
    if args.batch:
        for batch in args.batch:
            sweep_batch_gemv(batch, args.top, args.pdl)
        return
    if not args.skip_gemv:
        sweep_gemv(args.top, args.pdl)
    sweep_attention(args.positions, args.pdl)


if __name__ == "__main__":
    main()
