"""Batch-1 fused decode with FP8 (e4m3) weights against fp16, in one run (issue 19).

    python bench/fused_decode_fp8.py [--json out.json]          # H100: TinyLlama-1.1B shape, ~2 minutes
    TRITON_INTERPRET=1 python bench/fused_decode_fp8.py --tiny  # CPU smoke run (triton's interpreter)

A random fp16 LLaMA (``eval_decode.hf_model``) is written as a checkpoint, then quantized to FP8 per tensor by
``ckpt_eval.fp8_quantize`` (weights max|w| / 448, activation scales from a calibration prefill). Both run with
``compile="fused"`` (CUDA graphs on a GPU). Printed: decode tokens/s of each (``eval_decode.decode_rate``:
batch * (N - 1) / (t(N) - t(1)), best of 3), the measured copy bandwidth, bytes read per step (every tensor but
the embedding table: e4m3 codes, scales, norms and the fp16 lm_head for FP8), the bound = bandwidth / bytes and
the share of it reached, fp8 / fp16; each GEMV shape alone (22 distinct weights in one CUDA graph, GPU only); and
the FP8 fused path's greedy tokens against the same checkpoint in the torch backend computed in float32 (the
dequantized reference: fake-quantized inputs, no native FP8 GEMM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
from eval_decode import bandwidth, decode_rate, hf_model, prompts, write_checkpoint

GEMV_SHAPES = {"qkv": (2560, 2048, True, False), "dense": (2048, 2048, False, False),
               "fc+gate": (5632, 2048, True, True), "proj": (2048, 5632, False, False)}  # fmt: skip


def tiny_hf():
    """A small random fp16 LLaMA for the CPU smoke run (triton's interpreter runs one program at a time)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.float16).eval()


def step_bytes(ckpt: Path, rank: int = 0) -> int:
    """Bytes a one-token step reads of rank ``rank``'s weights: every tensor of its rank file but the embedding
    table (one row is read)."""
    from ckptfmt import RankFileReader

    with RankFileReader(Path(ckpt) / f"rank{rank}.safetensors") as reader:
        return sum(reader[n].nbytes for n in reader.entries if n != "transformer.vocab_embedding.weight")


@contextlib.contextmanager
def native_quant(enabled: bool):
    """Models loaded inside compute quantized linears natively (``torch._scaled_mm`` where the GPU has FP8) or,
    ``enabled`` False, with the emulation the fused step reproduces (``CKPT_EVAL_NATIVE_QUANT``)."""
    before = os.environ.get("CKPT_EVAL_NATIVE_QUANT")
    os.environ["CKPT_EVAL_NATIVE_QUANT"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CKPT_EVAL_NATIVE_QUANT"]
        else:
            os.environ["CKPT_EVAL_NATIVE_QUANT"] = before


def greedy_reference(ckpt: Path, prompt: torch.Tensor, steps: int, device: str) -> torch.Tensor:
    """Greedy tokens of the FP8 checkpoint in the torch backend, float32 compute, emulated quantization."""
    from ckpt_eval.distributed import init_parallel
    from ckpt_eval.weights import load_model
    from ckptfmt import load_config

    config = dataclasses.replace(load_config(ckpt), dtype="float32")
    with native_quant(False):
        model = load_model(ckpt, config, init_parallel(config.mapping, device))
    t = prompt.numel()
    model.setup_cache(1, t + steps)
    pad = torch.zeros(1, dtype=torch.long, device=device)
    out = []
    with torch.inference_mode():
        logits = model(prompt.view(1, -1).to(device), torch.arange(t, device=device), pad, last_only=True)
        for i in range(steps):
            token = logits[0, -1].argmax()
            out.append(int(token))
            logits = model(token.view(1, 1), torch.tensor([t + i], device=device), pad, last_only=True)
    return torch.tensor(out)


def gemv_times(device: str) -> dict:
    """Microseconds per GEMV of each TinyLlama shape, fp16 weights against e4m3 codes, launched as the step does."""
    from gemv_decode import LAYERS, graph_time_us

    from ckpt_eval import decode_kernels as dk
    from ckpt_eval.fused_decode import gemv_blocks, use_pdl

    pdl = use_pdl(torch.device(device))
    out = {}
    for name, (n, k, norm, gated) in GEMV_SHAPES.items():
        rows = 2 * n if gated else n
        x = torch.randn(k, device=device, dtype=torch.float16)
        g = torch.ones(k, device=device, dtype=torch.float16)
        y = torch.zeros(n, device=device, dtype=torch.float16)
        ws = torch.full((rows,), 0.02 / 448, device=device)
        xs = torch.tensor([4.0 / 448], device=device)
        row = {}
        for label in ("fp16", "fp8 before", "fp8"):
            fp8 = label != "fp16"
            ws_ = [(torch.randn(rows, k, device=device) * 0.02 / ws[0]).clamp(-448, 448).to(torch.float8_e4m3fn)
                   if fp8 else torch.randn(rows, k, device=device, dtype=torch.float16) * 0.02
                   for _ in range(LAYERS)]  # fmt: skip
            # now: dense's and proj's inputs arrive quantized (fused_decode.producer_quant), code rows per program
            at_producer = label == "fp8" and name in ("dense", "proj")
            quant = dict(WQ=True, AQ="none" if at_producer else "fp8") if fp8 else {}
            blocks = gemv_blocks(k, label == "fp8", gated)

            def launch(w, blocks=blocks, quant=quant, n=n, k=k, x=x, g=g, y=y, ws=ws, xs=xs, norm=norm, gated=gated):
                dk.gemv_kernel[(math.ceil(n / blocks["BN"]),)](
                    x, g, w, w, y, y, ws, xs, w, n, k, 1e-5, HAS_NORM=norm, HAS_BIAS=False, HAS_RES=not norm,
                    GATED=gated, ACT="silu" if gated else "none", PDL=pdl, **quant, **blocks,
                    **({"launch_pdl": True} if pdl else {}),
                )  # fmt: skip

            us = graph_time_us(lambda ws_=ws_, launch=launch: [launch(w) for w in ws_]) / LAYERS
            row[label] = {"us": us, "TB/s": ws_[0].numel() * ws_[0].element_size() / us / 1e6}
        out[name] = row
    return out


def run(args) -> dict:
    from ckpt_eval.fp8_quantize import quantize_fp8
    from ckpt_eval.fused_decode import FusedDecoder
    from ckpt_eval.runner import ModelRunner

    device = "cpu" if args.tiny else "cuda"
    hf = tiny_hf() if args.tiny else hf_model("1b", device, "float16")
    vocab = hf.config.vocab_size
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (triton interpreter)"}
    with tempfile.TemporaryDirectory() as work:
        fp16, fp8 = Path(work) / "fp16", Path(work) / "fp8"
        write_checkpoint(hf, fp16)
        del hf
        calibration = prompts(1, args.prompt_len, vocab, "cpu")
        quantize_fp8(fp16, fp8, calibration, device)
        result["bytes"] = {"fp16": step_bytes(fp16), "fp8": step_bytes(fp8)}
        runners = {label: ModelRunner.from_dir(path, device=device, compile="fused") for label, path in
                   (("fp16", fp16), ("fp8 before", fp8), ("fp8", fp8))}  # fmt: skip
        assert all(r.model.decode_path == "fused" for r in runners.values())
        before = runners["fp8 before"].model  # the FP8 step as it was: every GEMV quantizes its own input, 4 rows
        before.decode = FusedDecoder(before.model, fallback=before.decode.fallback, max_batch=1,
                                     quant_at_producer=False, tuning={"BN": 4})  # fmt: skip
        rows = list(prompts(1, args.prompt_len, vocab, device))
        eager = ModelRunner.from_dir(fp8, device=device)  # the torch backend's own FP8 step, model dtype
        with native_quant(False):  # the same, emulated: what the fused step computes
            emulated = ModelRunner.from_dir(fp8, device=device)
        result["reference"] = greedy_reference(fp8, rows[0].cpu(), args.steps, device).tolist()
    result["bandwidth"] = bandwidth(device, nbytes=(1 << 24) if args.tiny else (1 << 30))
    result["tokens/s"] = {}
    for label, runner in runners.items():
        gen = lambda n, r=runner: r.generate(rows, max_new_tokens=n)  # noqa: E731
        result["tokens/s"][label] = decode_rate(gen, 1, args.new_tokens, 1 if args.tiny else 3, device)
    result["fp8 tokens"] = runners["fp8"].generate(rows, max_new_tokens=args.steps)[0, 0, -args.steps :].tolist()
    before_tokens = runners["fp8 before"].generate(rows, max_new_tokens=args.steps)[0, 0, -args.steps :].tolist()
    result["fp8 tokens equal before"] = before_tokens == result["fp8 tokens"]  # the same values, bit for bit
    result["fp8 eager tokens"] = eager.generate(rows, max_new_tokens=args.steps)[0, 0, -args.steps :].tolist()
    result["fp8 emulated tokens"] = emulated.generate(rows, max_new_tokens=args.steps)[0, 0, -args.steps :].tolist()
    result["gemv"] = gemv_times(device) if device == "cuda" else {}
    return result


def report(r: dict) -> None:
    bw = r["bandwidth"]
    print(f"{r['device']}: copy bandwidth {bw / 1e9:.0f} GB/s")
    print(f"{'weights':<10} {'tokens/s':>10} {'MB/step':>10} {'bound':>10} {'of bound':>9}")
    for label in ("fp16", "fp8 before", "fp8"):
        rate, nbytes = r["tokens/s"][label], r["bytes"][label.split()[0]]
        bound = bw / nbytes
        print(f"{label:<10} {rate:>10.1f} {nbytes / 1e6:>10.1f} {bound:>10.1f} {100 * rate / bound:>8.1f}%")
    print(f"fp8 / fp16: {r['tokens/s']['fp8'] / r['tokens/s']['fp16']:.2f}x tokens/s "
          f"(targets: >= 1.70x and >= 65% of the FP8 bound); before: "
          f"{r['tokens/s']['fp8 before'] / r['tokens/s']['fp16']:.2f}x")  # fmt: skip
    print(f"fp8 greedy tokens equal to the step before: {r['fp8 tokens equal before']}")
    pairs = (("fused", "fp32 dequantized reference", "fp8 tokens", "reference"),
             ("fused", "torch backend eager, fp16", "fp8 tokens", "fp8 eager tokens"),
             ("fused", "torch backend eager, fp16, emulated FP8 GEMMs", "fp8 tokens", "fp8 emulated tokens"),
             ("torch backend eager", "fp32 dequantized reference", "fp8 eager tokens", "reference"))  # fmt: skip
    for who, label, mine, key in pairs:
        ours, ref = r[mine], r[key]
        same = sum(a == b for a, b in zip(ours, ref, strict=True))
        first = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b), None)
        print(f"greedy tokens, fp8 {who} vs {label}: {same}/{len(ref)} equal, first difference at step {first}")
    for name, row in r["gemv"].items():
        a, b, c = row["fp16"], row["fp8 before"], row["fp8"]
        print(f"gemv {name:<8} fp16 {a['us']:6.2f} us ({a['TB/s']:.2f} TB/s)  fp8 before {b['us']:6.2f} us "
              f"({b['TB/s']:.2f} TB/s)  fp8 {c['us']:6.2f} us ({c['TB/s']:.2f} TB/s)  {a['us'] / c['us']:.2f}x fp16, "
              f"{b['us'] / c['us']:.2f}x before")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a small model on CPU (run with TRITON_INTERPRET=1)")
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32, help="greedy steps compared with the reference")
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.tiny and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--tiny runs on CPU: set TRITON_INTERPRET=1")
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny (and TRITON_INTERPRET=1) on CPU")
    if args.tiny:
        args.new_tokens = min(args.new_tokens, 8)
    r = run(args)
    report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
