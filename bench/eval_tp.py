"""Tensor parallel on GPUs: tp 2 vs tp 1 with the torch backend (issue 10).

    python bench/eval_tp.py prepare --out WORK [--preset 1b]          # random fp16 checkpoints tp1 + tp2
    python bench/eval_tp.py run --ckpt WORK/tp1 --json tp1.json         # one process
    torchrun --nproc-per-node 2 bench/eval_tp.py run --ckpt WORK/tp2 --json tp2.json   # or mpirun -n 2
    python bench/eval_tp.py compare tp1.json tp2.json

``bench/multi_gpu.sh`` runs all of it (and ckpt-summarize at tp 1 and tp 2) with one command.

``run`` measures decode tokens/s at each batch size as batch * (N - 1) / (t(N) - t(1)) (prefill excluded,
best of 3), records the greedy tokens of a fixed batch of prompts, and, for tp > 1, the all-reduce share of a
decode step: the same decode timed again with the all-reduce replaced by a no-op (an ablation: the result
is wrong but the compute is the same), share = 1 - t(no all-reduce) / t(real).
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


def prepare(out: Path, preset: str, dtype: str, tp_sizes: list[int]) -> None:
    """Random full tensors, written as a checkpoint per tp size (sharded with ckptfmt's rules)."""
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


def tp_decode_rate(runner, batch: int, vocab: int, args) -> float:
    """Decode tokens/s measured as ``bench/eval_decode.py`` does, on random prompts."""
    rows = list(prompts(batch, args.prompt_len, vocab, "cpu"))
    return decode_rate(lambda n: runner.generate(rows, max_new_tokens=n), batch, args.new_tokens, 3, args.device)


def run(args) -> None:
    from ckpt_eval.runner import ModelRunner

    cfg = load_config(args.ckpt)
    runner = ModelRunner.from_dir(args.ckpt, device=args.device)
    par = runner.model.par
    vocab = cfg.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (n,), generator=gen) for n in (5, 17, 32, 9)]
    greedy = runner.generate(prompts, max_new_tokens=32, output_sequence_lengths=True)[0][:, 0].tolist()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    result = {
        "tp_size": cfg.mapping.tp_size,
        "gpu": gpu,
        "greedy_tokens": greedy,
        "tokens_per_s": {},
        "tokens_per_s_without_all_reduce": {},
        "all_reduce_share": {},
    }
    for batch in args.batch:
        result["tokens_per_s"][batch] = tp_decode_rate(runner, batch, vocab, args)
    if cfg.mapping.tp_size > 1:
        real = par.all_reduce
        par.all_reduce = lambda x: x  # ablation: same compute, no communication
        try:
            for batch in args.batch:
                rate = tp_decode_rate(runner, batch, vocab, args)
                result["tokens_per_s_without_all_reduce"][batch] = rate
                result["all_reduce_share"][batch] = 1 - result["tokens_per_s"][batch] / rate
        finally:
            par.all_reduce = real
    if par.rank == 0 and args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "greedy_tokens"}, indent=1))
    from ckpt_eval.distributed import shutdown

    shutdown()


def compare(a_path: str, b_path: str) -> None:
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    same = a["greedy_tokens"] == b["greedy_tokens"]
    agree = [
        next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra))
        for ra, rb in zip(a["greedy_tokens"], b["greedy_tokens"])
    ]
    print(
        f"GPU: {a['gpu']}; greedy tokens tp{a['tp_size']} vs tp{b['tp_size']} "
        f"(4 prompts x 32 new tokens): {'identical' if same else 'DIFFERENT'}; "
        f"first differing position per prompt (prompt + output): {agree}"
    )
    print(
        f"{'batch':>5} {'tp' + str(a['tp_size']) + ' tok/s':>12} {'tp' + str(b['tp_size']) + ' tok/s':>12} "
        f"{'speedup':>8} {'all-reduce share':>17}"
    )
    for batch, rate in a["tokens_per_s"].items():
        other = b["tokens_per_s"][batch]
        share = b["all_reduce_share"].get(batch)
        print(
            f"{batch:>5} {rate:12.1f} {other:12.1f} {other / rate:7.2f}x "
            f"{'' if share is None else f'{100 * share:16.0f}%'}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="1b", choices=list(PRESETS))
    p.add_argument("--dtype", default="float16")
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p = sub.add_parser("run")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    args = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if args.cmd == "prepare":
        prepare(args.out, args.preset, args.dtype, args.tp)
    elif args.cmd == "run":
        run(args)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
