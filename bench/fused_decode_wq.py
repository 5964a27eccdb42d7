"""Batch-1 fused decode from packed weight-only int8 / int4 and INT4 AWQ weights against fp16, in one run (issues
24 and 19).

    python bench/fused_decode_wq.py [--json out.json]          # H100: TinyLlama-1.1B shape, ~3 minutes
    TRITON_INTERPRET=1 python bench/fused_decode_wq.py --tiny  # CPU smoke run (triton's interpreter)

A random fp16 LLaMA (``eval_decode.hf_model``) is written as a checkpoint, then quantized by our own code
(``ckpt_eval.wq_quantize``): int8 and int4 per channel (``W8A16``, ``W4A16``) and INT4 AWQ, group 128
(``W4A16_AWQ`` with pre-quant scales). All run with ``compile="fused"`` (CUDA graphs on a GPU). Printed: decode
tokens/s of each (``eval_decode.decode_rate``, best of 3), the copy bandwidth, bytes read per step (every tensor
but the embedding table: codes, scales, norms, the fp16 lm_head), the bound = bandwidth / bytes and the share
reached, the ratio to fp16; each packed GEMV shape alone against fp16 with a few launch settings (GPU only); and
each mode's greedy tokens against the same checkpoint in the torch backend computed in float32 (the dequantized
reference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
from eval_decode import bandwidth, decode_rate, hf_model, prompts, write_checkpoint
from fused_decode_fp8 import GEMV_SHAPES, greedy_reference, step_bytes, tiny_hf

MODES = ("int8", "int4", "int4_awq")
SETTINGS = [{"BR": br, "num_warps": w} for br in (2, 4, 8) for w in (4, 8)]  # swept per GEMV shape


def packed_layer(n: int, k: int, mode: str, device: str):
    """A random ``PackedWeight`` of ``n`` x ``k`` in ``mode``'s layout (group 128 for AWQ)."""
    from ckpt_eval.quantized import PackedWeight

    bits = 8 if mode == "int8" else 4
    codes = torch.randint(-128, 128, (n * bits // 8, k), dtype=torch.int8, device=device)
    groups = k // 128 if mode == "int4_awq" else 1
    scale = torch.rand(n, groups, device=device) * 1e-3
    pre = torch.rand(k, device=device) + 0.5 if mode == "int4_awq" else None
    return PackedWeight(codes, scale, pre, bits, mode == "int4_awq")


def gemv_times(device: str) -> dict:
    """Microseconds per GEMV of each TinyLlama shape: fp16 (``decode_kernels.gemv_kernel``) and each mode's packed
    GEMV with each of ``SETTINGS`` (22 distinct weights cycling in one CUDA graph, as ``gemv_decode`` times)."""
    from gemv_decode import LAYERS, graph_time_us

    from ckpt_eval import decode_kernels as dk
    from ckpt_eval.decode_wq_kernels import packed_blocks, packed_gemv
    from ckpt_eval.fused_decode import gemv_blocks, use_pdl

    pdl = use_pdl(torch.device(device))
    launch_pdl = {"launch_pdl": True} if pdl else {}
    out: dict = {}
    for name, (n, k, norm, gated) in GEMV_SHAPES.items():
        x = torch.randn(k, device=device, dtype=torch.float16)
        g = torch.ones(k, device=device, dtype=torch.float16)
        y = torch.zeros(n, device=device, dtype=torch.float16)
        rows = 2 * n if gated else n
        ws = [torch.randn(rows, k, device=device, dtype=torch.float16) * 0.02 for _ in range(LAYERS)]
        blocks = gemv_blocks(k)

        def fp16(w, blocks=blocks, n=n, k=k, x=x, g=g, y=y, norm=norm, gated=gated):
            dk.gemv_kernel[(math.ceil(n / blocks["BN"]),)](
                x, g, w, w, y, y, w, w, w, n, k, 1e-5, HAS_NORM=norm, HAS_BIAS=False, HAS_RES=not norm,
                GATED=gated, ACT="silu" if gated else "none", PDL=pdl, **blocks, **launch_pdl,
            )  # fmt: skip

        us = graph_time_us(lambda ws=ws, fp16=fp16: [fp16(w) for w in ws]) / LAYERS
        row = {"fp16": {"us": us, "TB/s": rows * k * 2 / us / 1e6}}
        for mode in MODES:
            layers = [[packed_layer(n, k, mode, device) for _ in range(2 if gated else 1)] for _ in range(LAYERS)]
            nbytes = sum(p.codes.numel() + p.scale.numel() * 4 for p in layers[0])
            timed = {}
            base = packed_blocks(layers[0][0])
            default = {"BR": base["BR"], "num_warps": base["num_warps"]}
            for setting in [default, *(s for s in SETTINGS if s != default)]:
                blocks_ = {**base, **setting}

                def run(layers=layers, blocks_=blocks_, x=x, g=g, y=y, norm=norm, gated=gated):
                    for ps in layers:
                        packed_gemv(x, ps, y, eps=1e-5, norm=g if norm else None, res=None if norm else y,
                                    act="silu" if gated else "none", pdl=pdl, blocks=blocks_)  # fmt: skip

                timed[f"BR{setting['BR']}/w{setting['num_warps']}"] = graph_time_us(run) / LAYERS
            best = min(timed, key=timed.__getitem__)
            first = next(iter(timed))  # the default settings
            row[mode] = {"us": timed[first], "TB/s": nbytes / timed[first] / 1e6, "best": best,
                         "best us": timed[best], "all": timed}  # fmt: skip
        out[name] = row
    return out


def run(args) -> dict:
    from ckpt_eval.runner import ModelRunner
    from ckpt_eval.wq_quantize import quantize_wq

    device = "cpu" if args.tiny else "cuda"
    hf = tiny_hf() if args.tiny else hf_model("1b", device, "float16")
    vocab = hf.config.vocab_size
    group = 32 if args.tiny else 128
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (triton interpreter)"}
    result["batch"] = args.batch
    with tempfile.TemporaryDirectory() as work:
        paths = {label: Path(work) / label for label in ("fp16", *MODES)}
        write_checkpoint(hf, paths["fp16"])
        del hf
        for mode in MODES:
            quantize_wq(paths["fp16"], paths[mode], mode, group)
        result["bytes"] = {label: step_bytes(path) for label, path in paths.items()}
        rows = list(prompts(args.batch, args.prompt_len, vocab, device))
        result["reference"] = {m: greedy_reference(paths[m], rows[0].cpu(), args.steps, device).tolist() for m in MODES}
        runners = {label: ModelRunner.from_dir(path, device=device, compile="fused") for label, path in paths.items()}
        assert all(r.model.decode_path == "fused" for r in runners.values())
    result["bandwidth"] = bandwidth(device, nbytes=(1 << 24) if args.tiny else (1 << 30))
    result["tokens/s"], result["tokens"] = {}, {}
    for label, runner in runners.items():
        gen = lambda n, r=runner: r.generate(rows, max_new_tokens=n)  # noqa: E731
        result["tokens/s"][label] = decode_rate(gen, args.batch, args.new_tokens, 1 if args.tiny else 3, device)
        if label in MODES:
            result["tokens"][label] = runner.generate(rows, max_new_tokens=args.steps)[0, 0, -args.steps :].tolist()
    try:  # the per-shape timings must not cost the figures above
        result["gemv"] = gemv_times(device) if device == "cuda" and args.batch == 1 else {}
    except Exception as err:  # noqa: BLE001
        result["gemv"], result["gemv error"] = {}, f"{type(err).__name__}: {err}"
    return result


def report(r: dict) -> None:
    bw, batch = r["bandwidth"], r.get("batch", 1)
    print(f"{r['device']}: copy bandwidth {bw / 1e9:.0f} GB/s, batch {batch} (bound: weight bytes read once a step)")
    print(f"{'weights':<9} {'tokens/s':>10} {'MB/step':>10} {'bound':>10} {'of bound':>9} {'vs fp16':>8}")
    for label in ("fp16", *MODES):
        rate, nbytes = r["tokens/s"][label], r["bytes"][label]
        bound = batch * bw / nbytes
        ratio = rate / r["tokens/s"]["fp16"]
        print(
            f"{label:<9} {rate:>10.1f} {nbytes / 1e6:>10.1f} {bound:>10.1f} {100 * rate / bound:>8.1f}% {ratio:>7.2f}x"
        )
    print("target: int4 (per channel) >= 2.50x fp16 tokens/s")
    for mode in MODES:
        ours, ref = r["tokens"][mode], r["reference"][mode]
        same = sum(a == b for a, b in zip(ours, ref, strict=True))
        first = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b), None)
        print(f"greedy tokens, {mode} fused vs fp32 dequantized reference: {same}/{len(ref)} equal, first "
              f"difference at step {first}")  # fmt: skip
    if "gemv error" in r:
        print(f"gemv timings failed: {r['gemv error']}")
    for name, row in r["gemv"].items():
        parts = [f"fp16 {row['fp16']['us']:6.2f} us ({row['fp16']['TB/s']:.2f} TB/s)"]
        for mode in MODES:
            m = row[mode]
            parts.append(f"{mode} {m['us']:6.2f} us ({m['TB/s']:.2f} TB/s; best {m['best']} {m['best us']:.2f} us)")
        print(f"gemv {name:<8} " + "  ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a small model on CPU (run with TRITON_INTERPRET=1)")
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32, help="greedy steps compared with the reference")
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1, help="rows decoded together (2-16: the batched kernels)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.tiny and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--tiny runs on CPU: set TRITON_INTERPRET=1")
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny (and TRITON_INTERPRET=1) on CPU")
    if args.tiny:
        args.new_tokens, args.steps = min(args.new_tokens, 8), min(args.steps, 8)
    r = run(args)
    report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
