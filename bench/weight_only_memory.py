"""Weight-only int8 / int4 and INT4 AWQ checkpoints in the torch backend: the memory the model holds, and what
computing each linear from its codes costs, against the previous path (each weight dequantized once at load and
held beside its codes) and fp16, in one run (issue 24).

    python bench/weight_only_memory.py                          # CPU: a 156M-parameter LLaMA, bfloat16, ~1 min
    python bench/weight_only_memory.py --device cuda --preset 1b --dtype float16   # TinyLlama-1.1B shape

A random LLaMA (transformers' init) is written as a checkpoint, then quantized by our own code
(``ckpt_eval.wq_quantize``: int8 and int4 per channel, INT4 AWQ group ``--group``). Each loads in the torch
backend (``ModelRunner``: eager decode, or with ``--compile MODE`` that decode step, at ``--batch``). "previous"
is the same loaded model with every ``PackedLinear`` turned back into a float linear holding the dequantized
weight beside the codes, fc and gate stacked, as ``weights.load_model`` built it before. Printed per model: bytes
the model holds (every parameter and buffer, counted once per storage; the KV cache is not yet allocated), the
decoder linears' share, the ratio to fp16; on CUDA the peak allocated during a prefill; time to first token of a
``--prompt_len`` prompt and decode tokens/s (``eval_decode.generate_times``), and whether "previous" gives the same
greedy tokens.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from eval_decode import PRESETS, generate_times, hf_model, prompts, timed, write_checkpoint
from torch import nn

MODES = ("int8", "int4", "int4_awq")
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")


def held_bytes(tensors) -> int:
    """Bytes of ``tensors``, each storage once (views of a stacked tensor)."""
    return sum({(t.untyped_storage().data_ptr(), t.device): t.untyped_storage().nbytes() for t in tensors}.values())


def model_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``."""
    return held_bytes([*module.parameters(), *module.buffers()])


def linear_bytes(model: nn.Module) -> int:
    """Bytes held by the decoder layers' linears (with the MLPs' stacked fc/gate, of which fc and gate are views)."""
    blocks = model.transformer.blocks()
    tensors = [t for b in blocks for m in linears_of(b) for t in [*m.parameters(), *m.buffers()]]
    return held_bytes(tensors + [p for b in blocks for p in (b.mlp.fc_gate, b.mlp.fc_gate_bias) if p is not None])


def linears_of(block: nn.Module) -> list[nn.Module]:
    return [block.get_submodule(n) for n in LINEARS if _has(block, n)]


def _has(block: nn.Module, name: str) -> bool:
    parent, _, leaf = name.rpartition(".")
    return getattr(block.get_submodule(parent), leaf, None) is not None


def dequantize_at_load(model: nn.Module) -> None:
    """Turn each ``PackedLinear`` of ``model`` back into what the previous load built: a float linear with the
    dequantized weight (model dtype) and the codes beside it; a gated MLP's fc and gate stacked (``MLP.fuse``)."""
    from ckpt_eval.model import RowLinear
    from ckpt_eval.quantized import PackedLinear

    for block in model.transformer.blocks():
        for name in LINEARS:
            if not _has(block, name):
                continue
            parent, _, leaf = name.rpartition(".")
            packed = block.get_submodule(name)
            assert isinstance(packed, PackedLinear)
            weight = nn.Parameter(packed.weight, requires_grad=False)
            with torch.device("meta"):
                if packed.reduce is not None:
                    linear = RowLinear(packed.in_features, packed.out_features, packed.bias is not None, packed.reduce)
                else:
                    linear = nn.Linear(packed.in_features, packed.out_features, bias=packed.bias is not None)
            linear.weight, linear.bias = weight, packed.bias
            linear.packed_weight = packed.packed_weight
            setattr(block.get_submodule(parent), leaf, linear)
        block.mlp.fuse()


def measure(runner, args, vocab: int) -> dict:
    """Held bytes, prefill time and peak, decode tokens/s and greedy tokens of one loaded model."""
    model = runner.model.model
    out = {"held": model_bytes(model), "linears": linear_bytes(model)}
    prompt = list(prompts(args.batch, args.prompt_len, vocab, args.device))
    generate = lambda n: runner.generate(prompt, max_new_tokens=n)  # noqa: E731
    t1, tn = generate_times(generate, args.new_tokens, args.repeats, args.device)  # warm as well
    out["ttft_s"], out["decode_tok_s"] = t1, args.batch * (args.new_tokens - 1) / (tn - t1)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        timed(lambda: generate(1), args.device)
        out["prefill_peak_extra"] = torch.cuda.max_memory_allocated() - base
    out["decode_path"] = runner.model.decode_path
    out["tokens"] = runner.generate(prompt, max_new_tokens=args.new_tokens).tolist()
    return out


def run(args) -> dict:
    from ckpt_eval.backends.torch_backend import decode_step
    from ckpt_eval.runner import ModelRunner
    from ckpt_eval.wq_quantize import quantize_wq

    hf = hf_model(args.preset, "cpu", args.dtype)
    result: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    result.update(preset=args.preset, dtype=args.dtype, parameters=sum(p.numel() for p in hf.parameters()))
    result.update(batch=args.batch, compile=args.compile)
    vocab = hf.config.vocab_size
    result["models"] = models = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        paths = {args.dtype: Path(work) / "float"}
        write_checkpoint(hf, paths[args.dtype])
        del hf
        for mode in MODES:
            paths[mode] = Path(work) / mode
            quantize_wq(paths[args.dtype], paths[mode], mode, args.group)
        for label, path in paths.items():
            runner = ModelRunner.from_dir(path, device=args.device, compile=args.compile or False)
            models[label] = measure(runner, args, vocab)
            print(f"{label}: {_line(models[label])}", flush=True)
            if label in MODES:
                dequantize_at_load(runner.model.model)
                if args.compile:  # the step again, over the previous layout
                    runner.model.decode, runner.model.decode_path = decode_step(runner.model.model, args.compile)
                prev = models[f"{label} previous"] = measure(runner, args, vocab)
                prev["same_tokens"] = prev.pop("tokens") == models[label]["tokens"]
                print(f"{label} previous: {_line(prev)}", flush=True)
            del runner
    for m in models.values():
        m.pop("tokens", None)
    return result


def _line(m: dict) -> str:
    peak = f", prefill peak +{m['prefill_peak_extra'] / 2**20:.0f} MiB" if "prefill_peak_extra" in m else ""
    return (
        f"held {m['held'] / 2**20:.0f} MiB (linears {m['linears'] / 2**20:.0f}){peak}, "
        f"TTFT {m['ttft_s'] * 1e3:.1f} ms, decode {m['decode_tok_s']:.1f} tok/s"
    )


def report(r: dict) -> None:
    models, base = r["models"], r["models"][r["dtype"]]
    step = f"--compile {r['compile']}" if r["compile"] else "eager"
    print(f"\n{r['device']}, preset {r['preset']} ({r['parameters'] / 1e6:.0f}M parameters), {r['dtype']}, ", end="")
    print(f"batch {r['batch']}, decode {step} (ours: {models[r['dtype']]['decode_path']})")
    head = f"{'model':18} {'held MiB':>9} {'linears':>8} {'held/fp':>8} {'TTFT ms':>8} {'tok/s':>7} {'vs prev':>8}"
    print(head + "  same tokens")
    for label, m in models.items():
        mode = label.split()[0]
        prev = models.get(f"{mode} previous") if label in MODES else None
        ratio = f"{m['decode_tok_s'] / prev['decode_tok_s']:.2f}x" if prev else ""
        same = {True: "yes", False: "NO"}.get(m.get("same_tokens"), "")
        print(
            f"{label:18} {m['held'] / 2**20:>9.0f} {m['linears'] / 2**20:>8.0f} {m['held'] / base['held']:>8.2f} "
            f"{m['ttft_s'] * 1e3:>8.1f} {m['decode_tok_s']:>7.1f} {ratio:>8}  {same}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="150m", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--prompt_len", type=int, default=256)
    ap.add_argument("--new_tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--compile", metavar="MODE", help="the decode step of ModelRunner(compile=MODE): auto, fused, ...")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--group", type=int, default=128, help="INT4 AWQ group size")
    ap.add_argument("--workdir", default=None, help="where the checkpoints go (a temporary directory in it)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    r = run(args)
    report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
