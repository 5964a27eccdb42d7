"""Time to first token (prefill) of ckpt_eval's torch backend vs transformers (sdpa), with the model FLOP
utilisation against the GPU's dense fp16 tensor-core peak.

    python bench/prefill.py [--device cuda] [--preset 1b] [--lengths 1024 4096] [--batch 1 8] [--compile]
                            [--ragged] [--profile] [--json out.json]

Same random TinyLlama-1.1B-shaped model and checkpoint as bench/eval_decode.py. For each (prompt length,
batch) cell it times, best of ``--repeats`` after a warm-up:
- ours: ``ModelRunner.generate(rows, max_new_tokens=1)`` — the whole first-token path a user runs;
- transformers ``generate(max_new_tokens=1)`` and its bare forward (``logits_to_keep=1``), both sdpa.
The ratio is against the faster of the two transformers timings. With ``--compile`` (prompts through compiled
layers) the eager path is timed too, as "ours eager". ``--ragged`` adds cells whose prompts have
lengths spread over 50-100 % of the cell's length (left padding for both systems), as summarize batches do.
FLOPs counted: 2 x non-embedding parameters x prompt tokens, plus causal attention (2 x 2 x L^2/2 x hidden
per layer per sequence); padding is not counted. ``--device cpu --preset tiny`` checks the path without a GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import eval_decode
import torch
from eval_decode import PRESETS, hf_model, prompts, sync, write_checkpoint

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense fp16/bf16 tensor-core peak (SXM), per the data sheets


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def prompt_rows(batch: int, length: int, vocab: int, device: str, ragged: bool) -> list[torch.Tensor]:
    ids = prompts(batch, length, vocab, device)
    if not ragged:
        return list(ids)
    gen = torch.Generator().manual_seed(length)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen).tolist()
    lengths[0] = length  # the longest row sets the padded length
    return [row[:n] for row, n in zip(ids, lengths)]


def left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def best_time(fn, repeats: int, device: str) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def flops(cfg, rows: list[torch.Tensor], nonembed_params: int) -> float:
    total = 0.0
    for r in rows:
        n = len(r)
        total += 2 * nonembed_params * n + 2 * cfg.num_hidden_layers * cfg.hidden_size * n * n  # 2*2*n^2/2*h
    return total


def profile_prefill(fn, device: str, label: str) -> list:
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    totals: dict[str, list] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(e.name[:100], [0, 0.0])
            entry[0] += 1
            entry[1] += e.device_time
    top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:15]
    busy = sum(us for _, us in totals.values()) / 1e3
    print(f"profile {label}: GPU busy {busy:.2f} ms")
    for name, (count, us) in top:
        print(f"    {us / 1e3:8.3f} ms  {count:5d}x  {name}")
    return [[name, count, us / 1e3] for name, (count, us) in top]


def run(args) -> dict:
    from ckpt_eval.runner import ModelRunner

    eval_decode.MAX_POS = max(eval_decode.MAX_POS, 2 * max(args.lengths))  # room for the longest prompt
    hf = hf_model(args.preset, args.device, args.dtype)
    cfg = hf.config
    nonembed = sum(p.numel() for p in hf.parameters()) - cfg.vocab_size * cfg.hidden_size
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        ckpt = Path(work) / "ckpt"
        write_checkpoint(hf, ckpt)
        ours = ModelRunner.from_dir(ckpt, device=args.device, compile="auto" if args.compile else None)
        eager = ModelRunner.from_dir(ckpt, device=args.device) if args.compile else None  # the previous path
    peak = peak_flops(args.device)
    result: dict = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "preset": args.preset,
        "dtype": args.dtype,
        "peak_flops": peak,
        "cells": [],
    }
    for ragged in [False, True] if args.ragged else [False]:
        for length in args.lengths:
            for batch in args.batch:
                rows = prompt_rows(batch, length, cfg.vocab_size, args.device, ragged)
                ids, mask = left_padded(rows)
                systems = {
                    "ours": lambda rows=rows: ours.generate(rows, max_new_tokens=1),
                    **({"ours eager": lambda rows=rows: eager.generate(rows, max_new_tokens=1)} if eager else {}),
                    "transformers generate": lambda ids=ids, mask=mask: hf.generate(
                        ids, attention_mask=mask, max_new_tokens=1, do_sample=False
                    ),
                    "transformers forward": lambda ids=ids, mask=mask: hf(ids, attention_mask=mask, logits_to_keep=1),
                }
                cell: dict = {"length": length, "batch": batch, "ragged": ragged, "ms": {}}
                with torch.inference_mode():
                    for label, fn in systems.items():
                        try:
                            cell["ms"][label] = 1e3 * best_time(fn, args.repeats, args.device)
                        except Exception as err:  # one failing system must not hide the others' figures
                            cell["ms"][label] = f"failed: {type(err).__name__}: {str(err).splitlines()[0]}"
                    if args.profile:
                        cell["profile"] = profile_prefill(systems["ours"], args.device, f"ours L={length} b={batch}")
                work_flops = flops(cfg, rows, nonembed)
                if peak and isinstance(cell["ms"]["ours"], float):
                    cell["ours_mfu"] = work_flops / (cell["ms"]["ours"] / 1e3) / peak
                hf_best = [v for k, v in cell["ms"].items() if k.startswith("transformers") and isinstance(v, float)]
                if hf_best and isinstance(cell["ms"]["ours"], float):
                    cell["speedup_vs_transformers"] = min(hf_best) / cell["ms"]["ours"]
                result["cells"].append(cell)
                print(json.dumps(cell), flush=True)
    return result


def report(r: dict) -> None:
    print(f"{r['device']}: {r['preset']} LLaMA {r['dtype']}, peak {r['peak_flops'] or 0:.3g} FLOP/s")
    print(
        f"{'length':>6} {'batch':>5} {'ragged':>6} {'ours ms':>9} {'eager ms':>9} {'hf gen ms':>9} {'hf fwd ms':>9} "
        f"{'x hf':>6} MFU"
    )
    for c in r["cells"]:
        ms = c["ms"]

        def f(v):
            return f"{v:9.2f}" if isinstance(v, float) else f"{'-' if v is None else 'fail':>9}"

        mfu = f"{100 * c['ours_mfu']:.0f}%" if "ours_mfu" in c else "-"
        x = f"{c['speedup_vs_transformers']:6.2f}" if "speedup_vs_transformers" in c else f"{'-':>6}"
        print(
            f"{c['length']:>6} {c['batch']:>5} {str(c['ragged']):>6} {f(ms['ours'])} {f(ms.get('ours eager'))} "
            f"{f(ms['transformers generate'])} {f(ms['transformers forward'])} {x} {mfu}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=list(PRESETS), help="model shape (default: 1b on cuda, tiny on cpu)")
    ap.add_argument("--dtype", help="default: float16 on cuda, float32 on cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="ours with compile='auto' (as ckpt-summarize --compile)")
    ap.add_argument("--ragged", action="store_true", help="also cells with prompt lengths spread over 50-100 %%")
    ap.add_argument("--profile", action="store_true", help="print our prefill's top CUDA kernels per cell")
    ap.add_argument("--workdir", help="where the temporary checkpoint goes (default: the system temp dir)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    args.preset = args.preset or ("1b" if cuda else "tiny")
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    r = run(args)
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
