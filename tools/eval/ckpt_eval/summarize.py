"""``ckpt-summarize``: ROUGE of our model (engine or checkpoint) and of transformers on CNN/DailyMail-style articles.

Follows TensorRT-LLM's ``summarize.py``: the prompt is the article + `` TL;DR: ``, greedy decoding by default,
ROUGE-1/2/L/Lsum x 100 per tested system, ``--check_accuracy`` fails (exit 1) when ROUGE-1 is below
``--tensorrt_llm_rouge1_threshold``. Both systems run through ``ModelRunner`` (same batching, sampling and
stopping), transformers as the ``hf`` backend. Under ``mpirun -n N`` every rank runs our model, rank 0 runs
transformers, prints and writes the report. Errors are one line on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ckptfmt import TOKENIZER_DIR, CheckpointError

from .backends import RunnerError
from .dataset import DatasetError, load_summarization_dataset
from .metrics import compute_rouge, encode_prompt
from .report import ReportError, print_table, write_report
from .run_cli import add_device_flags, backend_options
from .sampling import SamplingConfig

log = logging.getLogger("ckpt_eval")

DATA_TYPES = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
HF_NAME = "transformers"


class SummarizeError(Exception):
    """Bad flags or inputs; the message is one line."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckpt-summarize", description=__doc__.splitlines()[0])
    p.add_argument("--engine_dir", help="engine directory (ckpt-build output); backend trt")
    p.add_argument("--checkpoint_dir", help="checkpoint directory (config.json + rank*.safetensors); backend torch")
    p.add_argument("--hf_model_dir", help="Hugging Face model directory (for --test_hf; also a tokenizer source)")
    p.add_argument(
        "--tokenizer_dir",
        help="default: the engine/checkpoint directory (or its tokenizer/ folder) "
        "if it holds tokenizer files, else --hf_model_dir",
    )
    p.add_argument("--test_trt_llm", action="store_true", help="evaluate our model (engine or checkpoint)")
    p.add_argument("--test_hf", action="store_true", help="evaluate the Hugging Face model with transformers")
    p.add_argument("--backend", choices=["trt", "torch"], help="default: trt with --engine_dir, else torch")
    p.add_argument("--data_type", default="fp16", choices=sorted(DATA_TYPES), help="dtype of the HF model")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--max_ite", type=int, default=20, help="number of batches")
    p.add_argument("--max_input_length", type=int, default=923, help="prompt tokens (the TL;DR cue is kept)")
    p.add_argument("--output_len", type=int, default=100, help="new tokens per summary")
    p.add_argument("--num_beams", type=int, default=1, help="only 1 (no beam search)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=1, help="1: greedy; 0: off")
    p.add_argument("--top_p", type=float, default=0.0, help="0: off")
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--random_seed", type=int, default=0)
    p.add_argument("--check_accuracy", action="store_true", help="exit 1 when ROUGE-1 < the threshold")
    p.add_argument("--tensorrt_llm_rouge1_threshold", type=float, default=15.0)
    p.add_argument(
        "--dataset",
        "--dataset_path",
        dest="dataset",
        help="json/jsonl/parquet/arrow file or datasets directory (default: the shipped set)",
    )
    p.add_argument("--report", metavar="DIR", help="write results.json and rouge.png into DIR")
    add_device_flags(p)
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p


@dataclass
class SystemRun:
    """One system's summaries and timings."""

    name: str
    predictions: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    new_tokens: int = 0

    def scores(self, references: list[str]) -> dict[str, float]:
        total = sum(self.seconds)
        return {
            **compute_rouge(self.predictions, references[: len(self.predictions)]),
            "tokens_per_s": self.new_tokens / total if total > 0 else float("nan"),
            "latency_per_batch_s": total / len(self.seconds) if self.seconds else float("nan"),
        }


def check_args(args) -> tuple[str, str | None]:
    """(our backend, our model directory); raises ``SummarizeError`` on inconsistent flags."""
    if args.num_beams != 1:
        raise SummarizeError(f"--num_beams {args.num_beams}: beam search is not supported (only --num_beams 1)")
    if not (args.test_trt_llm or args.test_hf):
        raise SummarizeError("nothing to evaluate: pass --test_trt_llm (our model) and/or --test_hf (transformers)")
    for name in ("batch_size", "max_ite", "max_input_length", "output_len"):
        if getattr(args, name) < 1:
            raise SummarizeError(f"--{name}: must be >= 1 (got {getattr(args, name)})")
    SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.random_seed)
    backend = args.backend or ("trt" if args.engine_dir else "torch")
    model_dir = args.engine_dir if backend == "trt" else args.checkpoint_dir
    if args.test_trt_llm and not model_dir:
        flag = "--engine_dir" if backend == "trt" else "--checkpoint_dir"
        raise SummarizeError(f"--test_trt_llm with --backend {backend} needs {flag}")
    if args.test_hf and not args.hf_model_dir:
        raise SummarizeError("--test_hf needs --hf_model_dir")
    return backend, model_dir if args.test_trt_llm else None


def model_vocab_size(backend: str, model_dir: str) -> int:
    """vocab_size from the engine's or checkpoint's config, without loading weights."""
    if backend == "trt":
        from ckptfmt.engine import load_engine_config

        return load_engine_config(model_dir).checkpoint_config.vocab_size
    from ckptfmt import load_config

    return load_config(model_dir).vocab_size


def hf_vocab_size(hf_dir: str) -> int:
    path = Path(hf_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SummarizeError(f"{path}: missing (not a Hugging Face model directory)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SummarizeError(f"{path}: cannot read ({err})") from None
    vocab = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    if not isinstance(vocab, int):
        raise SummarizeError(f"{path}: vocab_size: missing")
    return vocab


def tokenizer_dir(args, model_dir: str | None) -> str:
    """--tokenizer_dir, else the model directory (or its tokenizer/ folder) with tokenizer files, else the HF dir."""
    if args.tokenizer_dir:
        return args.tokenizer_dir
    for candidate in [Path(model_dir), Path(model_dir) / TOKENIZER_DIR] if model_dir else []:
        if any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return str(candidate)
    if args.hf_model_dir:
        return args.hf_model_dir
    raise SummarizeError(f"no tokenizer: {model_dir} has no tokenizer files; pass --tokenizer_dir or --hf_model_dir")


def load_tokenizer(directory: str):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SummarizeError("tokenizing needs transformers: pip install 'ckpt-eval[torch]'") from None
    if not Path(directory).is_dir():
        raise SummarizeError(f"{directory}: tokenizer directory does not exist")
    try:
        return AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as err:
        raise SummarizeError(f"{directory}: no usable tokenizer ({str(err).splitlines()[0]})") from None


def check_tokenizer(tokenizer, directory: str, vocab_sizes: dict[str, int]) -> None:
    """The tokenizer must fit each model's vocabulary, and the tested models must share one vocabulary."""
    if len(set(vocab_sizes.values())) > 1:
        sizes = ", ".join(f"{name} {size}" for name, size in vocab_sizes.items())
        raise SummarizeError(
            f"vocabulary mismatch between the tested models ({sizes}): compare the checkpoint "
            "with the Hugging Face model it was converted from"
        )
    name, vocab = next(iter(vocab_sizes.items()))
    size = len(tokenizer)
    ids = [i for i in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) if i is not None]
    if size > vocab or any(i >= vocab for i in ids) or size < vocab // 2:
        raise SummarizeError(
            f"tokenizer mismatch: {directory} has {size} tokens but {name} has vocab_size {vocab}; "
            "pass the model's own tokenizer with --tokenizer_dir"
        )


def make_batches(records: list[dict], tokenizer, args) -> list[tuple[list, list[str]]]:
    """The first ``max_ite`` batches: (prompt token tensors, reference highlights)."""
    import torch

    batches = []
    for start in range(0, min(len(records), args.batch_size * args.max_ite), args.batch_size):
        chunk = records[start : start + args.batch_size]
        prompts = [torch.tensor(encode_prompt(r["article"], tokenizer, args.max_input_length)) for r in chunk]
        batches.append((prompts, [r["highlights"] for r in chunk]))
    return batches


def run_system(runner, name: str, batches, tokenizer, args) -> SystemRun:
    """Summarize every batch with ``runner``; time each ``generate`` call."""
    import torch

    run = SystemRun(name)
    end_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    for index, (prompts, _) in enumerate(batches):
        start = time.perf_counter()
        out = runner.generate(
            prompts,
            max_new_tokens=args.output_len,
            end_id=end_id,
            pad_id=pad_id,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            random_seed=args.random_seed,
            return_dict=True,
        )
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        run.seconds.append(time.perf_counter() - start)
        for row, prompt in enumerate(prompts):
            end = int(out["sequence_lengths"][row, 0])
            run.new_tokens += end - prompt.numel()
            run.predictions.append(
                tokenizer.decode(
                    out["output_ids"][row, 0, prompt.numel() : end].tolist(), skip_special_tokens=True
                ).strip()
            )
        log.info("%s: batch %d/%d in %.2f s", name, index + 1, len(batches), run.seconds[-1])
    return run


def open_runner(backend: str, model_dir: str, args):
    from .runner import ModelRunner

    options = {"dtype": DATA_TYPES[args.data_type]} if backend == "hf" else backend_options(args, backend)
    start = time.perf_counter()
    runner = ModelRunner.from_dir(model_dir, backend=backend, device=args.device, **options)
    log.info("%s: loaded %s in %.1f s", backend, model_dir, time.perf_counter() - start)
    return runner


def accuracy_gate(systems: dict[str, dict], ours: str | None, threshold: float) -> tuple[bool, str]:
    """(passed, one line): ROUGE-1 of our system (transformers' when ours was not tested) vs the threshold."""
    gated = ours if ours is not None else HF_NAME
    rouge1 = systems[gated]["rouge1"]
    passed = rouge1 >= threshold
    line = f"accuracy check: {gated} ROUGE-1 {rouge1:.2f} {'>=' if passed else '<'} threshold {threshold:.2f}"
    if ours is not None and HF_NAME in systems:
        line += f" ({HF_NAME} {systems[HF_NAME]['rouge1']:.2f}, difference {rouge1 - systems[HF_NAME]['rouge1']:+.2f})"
    return passed, f"{line}: {'PASSED' if passed else 'FAILED'}"


def summarize(args) -> int:
    from .distributed import detect_launch, shutdown

    backend, model_dir = check_args(args)
    rank = detect_launch().rank
    vocab_sizes = {}
    if model_dir:
        vocab_sizes[f"{model_dir}"] = model_vocab_size(backend, model_dir)
    if args.test_hf:
        vocab_sizes[args.hf_model_dir] = hf_vocab_size(args.hf_model_dir)
    tok_dir = tokenizer_dir(args, model_dir or None)
    tokenizer = load_tokenizer(tok_dir)
    check_tokenizer(tokenizer, tok_dir, vocab_sizes)
    records = load_summarization_dataset(args.dataset)
    batches = make_batches(records, tokenizer, args)
    references = [ref for _, refs in batches for ref in refs]
    runs: list[SystemRun] = []
    ours = f"ours ({backend})" if model_dir else None
    if model_dir:
        args.model_running = True
        runs.append(run_system(open_runner(backend, model_dir, args), ours, batches, tokenizer, args))
        args.model_running = False
        shutdown()
    if rank != 0:
        return 0
    if args.test_hf:
        runs.append(run_system(open_runner("hf", args.hf_model_dir, args), HF_NAME, batches, tokenizer, args))
    systems = {run.name: run.scores(references) for run in runs}
    print_table(systems)
    passed, gate_line = accuracy_gate(systems, ours, args.tensorrt_llm_rouge1_threshold)
    if args.check_accuracy:
        print(gate_line)
    if args.report:
        settings = {k: v for k, v in vars(args).items() if k not in ("report", "model_running")}
        results = {
            "settings": {**settings, "backend": backend, "tokenizer_dir": tok_dir},
            "dataset": {"source": args.dataset or "shipped cnn_dailymail_mini", "articles": len(references)},
            "systems": systems,
            "timings": {run.name: {"seconds_per_batch": run.seconds, "new_tokens": run.new_tokens} for run in runs},
            "accuracy": {
                "checked": args.check_accuracy,
                "threshold": args.tensorrt_llm_rouge1_threshold,
                "passed": passed,
                "summary": gate_line,
            },
            "predictions": {run.name: run.predictions for run in runs},
        }
        paths = write_report(args.report, results)
        print(f"report: {paths['results']} and {paths['chart']}")
    return 0 if passed or not args.check_accuracy else 1


def fail(message: str, peers_print: bool) -> int:
    """One line on stderr, exit status 1.

    Under mpirun rank 0 prints at once; the other ranks wait a moment first, because mpirun stops the whole
    job as soon as one rank exits non-zero and rank 0 must have spoken by then. Up to the model run every
    rank meets the same flags and inputs, so the others stay silent; while the model runs (``peers_print``)
    a failing peer prints its own line, as rank 0 may instead be waiting for it in a collective, and stops
    the job.
    """
    from .distributed import abort, detect_launch

    launch = detect_launch()
    if launch.rank == 0:
        print(f"error: {message}", file=sys.stderr)
    else:
        time.sleep(2.0)
        if peers_print:
            print(f"error (rank {launch.rank}): {message}", file=sys.stderr)
    if launch.world_size > 1 and peers_print:
        abort(1)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.model_running = False  # set once our model is being opened (see ``fail``)
    from .distributed import detect_launch

    log.setLevel(args.log_level.upper() if detect_launch().rank == 0 else "WARNING")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[ckpt-summarize] %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    try:
        return summarize(args)
    except (SummarizeError, CheckpointError, RunnerError, DatasetError, ReportError) as err:
        return fail(str(err).splitlines()[0] if str(err) else type(err).__name__, args.model_running)


if __name__ == "__main__":
    sys.exit(main())
