"""Tensor (and pipeline) parallel on GPUs with the torch backend: tp 1 vs tp 2 (vs tp 4, vs pp 2) (issues 10, 25).

    python bench/eval_tp.py prepare --out WORK --preset 7b --tp 1 2 4 --pp2 [--fp8]   # random checkpoints
    python bench/eval_tp.py run --ckpt WORK/tp1 --compile fused --json tp1.json       # one process
    mpirun -n 2 python bench/eval_tp.py run --ckpt WORK/tp2 --compile fused --json tp2.json  # or torchrun
    python bench/eval_tp.py compare tp1.json tp2.json [tp4.json pp2.json ...]

``bench/multi_gpu.sh`` runs all of it (and ckpt-summarize at tp 1 and tp 2) with one command.

``run`` measures decode tokens/s at each batch size as batch * (N - 1) / (t(N) - t(1)) (prefill excluded,
best of 3) with the decode step of ``--compile`` (``eager``, ``fused``, ``auto`` or a torch.compile mode, as
``ckpt-summarize --compile``), records the greedy tokens of a fixed batch of prompts, the bandwidth bound of a
step (bytes each rank reads per step: its weights but the embedding table, plus its KV cache at the mean
context, over the copy bandwidth of its GPU; the ranks read in parallel) and, for tp > 1, the all-reduce share
of a decode step: the same decode timed again with the all-reduce replaced by a no-op (an ablation: the
result is wrong but the compute is the same; the step is built again, so captured graphs lose it too),
share = 1 - t(no all-reduce) / t(real). ``prepare --fp8`` also writes the FP8 checkpoints of the same
weights (``ckpt_eval.fp8_quantize``, calibrated on random tokens) as fp8-tp1 and fp8-tp2.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from eval_decode import decode_rate, prompts  # bench/ is on the path of a script run from it

from ckptfmt import (
    CheckpointConfig,
    RankFileWriter,
    atomic_output_dir,
    expected_tensors,
    load_config,
    to_numpy,
    write_manifest,
)
from ckptfmt.sharding import shard

PRESETS = {  # LLaMA shapes; 1b = TinyLlama-1.1B with SmolLM2's vocabulary (so its tokenizer fits)
    "1b": dict(
        vocab_size=49152,
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
    ),
    "7b": dict(  # LLaMA-2-7B
        vocab_size=32000,
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
    ),
    "tiny": dict(
        vocab_size=49152,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=704,
    ),
}


def llama_config(preset: str, dtype: str) -> CheckpointConfig:
    return CheckpointConfig.from_dict(
        {
            "architecture": "LlamaForCausalLM",
            "dtype": dtype,
            "hidden_act": "silu",
            "norm_epsilon": 1e-5,
            "position_embedding_type": "rope_gpt_neox",
            "max_position_embeddings": 2048,
            "rotary_base": 10000.0,
            **PRESETS[preset],
        }
    ).check()


def random_tensor(name: str, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("layernorm.weight") or name.endswith("ln_f.weight"):
        return 1.0 + 0.05 * torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) * (0.02 if len(shape) > 1 else 0.05)


def prepare(out: Path, preset: str, dtype: str, tp_sizes: list[int], pp2: bool = False, fp8: bool = False) -> None:
    """Random full tensors, written as a checkpoint per tp size (sharded with ckptfmt's rules); ``pp2``: also
    at pp 2 (``ckptfmt.reshard``); ``fp8``: also FP8 at tp 1 and tp 2."""
    full = llama_config(preset, dtype)
    gen = torch.Generator().manual_seed(0)
    specs = expected_tensors(full, 0)
    tensors = {n: to_numpy(random_tensor(n, s.shape, gen).to(getattr(torch, dtype))) for n, s in specs.items()}
    for tp in tp_sizes:
        cfg = full.with_mapping(tp, 1)
        with atomic_output_dir(out / f"tp{tp}", overwrite=True) as tmp:
            entries = {}
            for rank in range(tp):
                parts = {n: np.ascontiguousarray(shard(n, t, cfg, rank)) for n, t in tensors.items()}
                writer = RankFileWriter(
                    tmp / f"rank{rank}.safetensors", {n: (p.dtype, p.shape) for n, p in parts.items()}
                )
                for n, p in parts.items():
                    writer.write(n, p)
                entries[f"rank{rank}.safetensors"] = writer.close()
            cfg.save(tmp)
            write_manifest(tmp, entries)
        print(f"wrote {out / f'tp{tp}'}")
    if pp2 or fp8:
        from ckptfmt.reshard import reshard

        if 1 not in tp_sizes:
            raise SystemExit("prepare: --pp2 and --fp8 start from the tp 1 checkpoint (add 1 to --tp)")
        if pp2:
            reshard(out / "tp1", out / "pp2", 1, 2, overwrite=True)
            print(f"wrote {out / 'pp2'}")
        if fp8:
            from ckpt_eval.fp8_quantize import quantize_fp8

            device = "cuda" if torch.cuda.is_available() else "cpu"
            tokens = torch.randint(0, full.vocab_size, (1, 256), generator=torch.Generator().manual_seed(2))
            if (out / "fp8-tp1").exists():
                import shutil

                shutil.rmtree(out / "fp8-tp1")
            quantize_fp8(out / "tp1", out / "fp8-tp1", tokens, device)
            reshard(out / "fp8-tp1", out / "fp8-tp2", 2, 1, overwrite=True)
            print(f"wrote {out / 'fp8-tp1'} and {out / 'fp8-tp2'}")


def tp_decode_rate(runner, batch: int, vocab: int, args) -> float:
    """Decode tokens/s measured as ``bench/eval_decode.py`` does, on random prompts."""
    rows = list(prompts(batch, args.prompt_len, vocab, "cpu"))
    return decode_rate(lambda n: runner.generate(rows, max_new_tokens=n), batch, args.new_tokens, 3, args.device)


def step_bytes(ckpt: Path, rank: int, model, batch: int, context: int) -> int:
    """Bytes one rank reads per decode step: its weights (``fused_decode_fp8.step_bytes``: FP8 weights count as
    their codes), plus its KV cache up to ``context`` positions (K and V)."""
    from fused_decode_fp8 import step_bytes as weight_bytes

    weights = weight_bytes(ckpt, rank)
    first = model.transformer.blocks()[0].attention
    elt = first.kv_cache.kv.element_size() if first.kv_cache is not None else 2
    return weights + 2 * len(model.transformer.blocks()) * first.kv_heads * first.head_size * context * batch * elt


def run(args) -> None:
    from eval_decode import bandwidth

    from ckpt_eval.backends.torch_backend import decode_step
    from ckpt_eval.runner import ModelRunner

    cfg = load_config(args.ckpt)
    compile_mode = False if args.compile == "eager" else args.compile
    runner = ModelRunner.from_dir(args.ckpt, device=args.device, compile=compile_mode)
    stepper = runner.model
    par = stepper.par
    vocab = cfg.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (n,), generator=gen) for n in (5, 17, 32, 9)]
    greedy = runner.generate(prompts, max_new_tokens=32, output_sequence_lengths=True)[0][:, 0].tolist()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    bw = bandwidth(args.device, nbytes=(1 << 30) if args.device == "cuda" else (1 << 24))
    result = {
        "tp_size": cfg.mapping.tp_size,
        "pp_size": cfg.mapping.pp_size,
        "dtype": cfg.dtype,
        "quant_algo": cfg.quantization.quant_algo,
        "decode_path": stepper.decode_path,
        "gpu": gpu,
        "bandwidth": bw,
        "greedy_tokens": greedy,
        "tokens_per_s": {},
        "bound_tokens_per_s": {},
        "tokens_per_s_without_all_reduce": {},
        "all_reduce_share": {},
    }
    context = args.prompt_len + args.new_tokens // 2
    for batch in args.batch:
        result["tokens_per_s"][batch] = tp_decode_rate(runner, batch, vocab, args)
        # pipeline stages read one after another; tensor-parallel ranks at once
        nbytes = step_bytes(args.ckpt, par.rank, stepper.model, batch, context) * cfg.mapping.pp_size
        result["bound_tokens_per_s"][batch] = batch * bw / nbytes
    if cfg.mapping.tp_size > 1:
        real = par.all_reduce

        def rebuild() -> None:  # a fused or compiled step captured the collective it was built with
            if compile_mode:
                stepper.decode, _ = decode_step(stepper.model, "auto" if compile_mode is True else compile_mode)

        par.all_reduce = lambda x: x  # ablation: same compute, no communication
        rebuild()
        try:
            for batch in args.batch:
                rate = tp_decode_rate(runner, batch, vocab, args)
                result["tokens_per_s_without_all_reduce"][batch] = rate
                result["all_reduce_share"][batch] = 1 - result["tokens_per_s"][batch] / rate
        finally:
            par.all_reduce = real
            rebuild()
    if par.rank == 0 and args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "greedy_tokens"}, indent=1))
    from ckpt_eval.distributed import shutdown

    shutdown()


def label(r: dict) -> str:
    quant = f"{r['quant_algo'].lower()} " if r.get("quant_algo") else ""
    return f"{quant}tp{r['tp_size']}" + (f"pp{r['pp_size']}" if r.get("pp_size", 1) > 1 else "")


def compare(a_path: str, *others: str) -> None:
    """Each run against the first: greedy tokens, tokens/s, speedup, fraction of its bound, all-reduce share."""
    a = json.loads(Path(a_path).read_text())
    runs = [a] + [json.loads(Path(p).read_text()) for p in others]
    print(f"GPU: {a['gpu']}; copy bandwidth {a.get('bandwidth', 0) / 1e9:.0f} GB/s per GPU")
    for b in runs[1:]:
        same = a["greedy_tokens"] == b["greedy_tokens"]
        agree = [
            next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra))
            for ra, rb in zip(a["greedy_tokens"], b["greedy_tokens"])
        ]
        print(
            f"greedy tokens {label(a)} vs {label(b)} (4 prompts x 32 new tokens): "
            f"{'identical' if same else 'DIFFERENT'}; first differing position per prompt (prompt + output): {agree}"
        )
    print(f"{'run':>10} {'step':>22} {'batch':>5} {'tok/s':>10} {'vs first':>8} {'of bound':>8} {'all-reduce':>10}")
    for r in runs:
        for batch, rate in r["tokens_per_s"].items():
            bound = r.get("bound_tokens_per_s", {}).get(batch)
            share = r["all_reduce_share"].get(batch)
            print(
                f"{label(r):>10} {r.get('decode_path', 'eager'):>22} {batch:>5} {rate:10.1f} "
                f"{rate / a['tokens_per_s'][batch]:7.2f}x {'' if bound is None else f'{100 * rate / bound:7.0f}%'} "
                f"{'' if share is None else f'{100 * share:9.0f}%'}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="1b", choices=list(PRESETS))
    p.add_argument("--dtype", default="float16")
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pp2", action="store_true", help="also the tp 1 weights at pp 2")
    p.add_argument("--fp8", action="store_true", help="also FP8 at tp 1 and tp 2")
    p = sub.add_parser("run")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--json")
    p.add_argument("--compile", default="eager", help="eager, fused, auto or a torch.compile mode")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("others", nargs="+")
    args = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if args.cmd == "prepare":
        prepare(args.out, args.preset, args.dtype, args.tp, args.pp2, args.fp8)
    elif args.cmd == "run":
        run(args)
    else:
        compare(args.a, *args.others)


if __name__ == "__main__":
    main()
