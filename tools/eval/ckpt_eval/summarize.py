"""``ckpt-summarize``: ROUGE of our model (engine or checkpoint) and of transformers on CNN/DailyMail-style articles.

Follows TensorRT-LLM's ``summarize.py``: the prompt is the article + `` TL;DR: ``, greedy decoding by default,
ROUGE-1/2/L/Lsum x 100 per tested system, ``--check_accuracy`` fails (exit 1) when ROUGE-1 is below
``--tensorrt_llm_rouge1_threshold``. Both systems run through ``ModelRunner`` (same batching, sampling and
stopping), transformers as the ``hf`` backend, batch by batch in turn (``compare.run_interleaved``) so that
their speed ratio holds under changing machine load. Under ``mpirun -n N`` every rank runs our model, rank 0
also runs transformers, prints and writes the report. Errors are one line on stderr with exit status 2;
Ctrl-C / SIGTERM exit 130 / 143 with one line and no report. torch and transformers are imported inside the
functions, after the first status line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ckptfmt import CheckpointConfig, CheckpointError, check_output_dir
from ckptfmt.config import canonical_dtype
from ckptfmt.entry import run_main

from .backends import RunnerError
from .compare import SystemRun, progress_line, run_interleaved, speed_ratio
from .dataset import DatasetError, load_summarization_dataset
from .gates import EXIT_USAGE, Gate, GateError, Metric, add_gate_flags, baseline_gates, finish, load_baseline
from .launch import detect_launch
from .metrics import compute_rouge, encode_prompt
from .quant_label import checkpoint_label, hf_label
from .report import ROUGE_CHART, ReportError, print_table, write_report
from .run_cli import add_runner_flags, backend_options
from .sampling import SamplingConfig
from .tokenizer import find_tokenizer_dir, load_tokenizer, missing_tokenizer

log = logging.getLogger("ckpt_eval")

HF_NAME = "transformers"
DEFAULT_MAX_INPUT_LENGTH = 923  # summarize.py's default
ROUGE_METRICS = [Metric(key, label) for key, label in ROUGE_CHART.scores.items()]  # gated by --baseline


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
    p.add_argument(
        "--data_type",
        "--dtype",
        dest="data_type",
        default="fp16",
        type=dtype_arg,
        help="dtype of the HF model: fp16/float16/half, bf16/bfloat16, fp32/float32 (default fp16)",
    )
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--max_ite", type=int, default=20, help="number of batches")
    p.add_argument(
        "--max_input_length",
        type=int,
        help=f"prompt tokens, the TL;DR cue kept (default {DEFAULT_MAX_INPUT_LENGTH}, lowered to fit the model's "
        "max_position_embeddings with --output_len)",
    )
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
    p.add_argument("--report", metavar="DIR", help="write results.json, rouge.png and a manifest into the new DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier --report DIR")
    add_gate_flags(p)
    add_runner_flags(p)
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def dtype_arg(text: str) -> str:
    """argparse type of --data_type: ckptfmt's canonical dtype name for any usual spelling."""
    try:
        return canonical_dtype(text)
    except CheckpointError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def scores(run: SystemRun, references: list[str]) -> dict[str, float]:
    return {**compute_rouge(run.predictions, references[: len(run.predictions)]), **run.speed()}


def check_args(args) -> tuple[str, str | None]:
    """(our backend, our model directory); raises ``SummarizeError`` on inconsistent flags."""
    if args.num_beams != 1:
        raise SummarizeError(f"--num_beams {args.num_beams}: beam search is not supported (only --num_beams 1)")
    result = check_models(args, ("batch_size", "max_ite", "max_input_length", "output_len"))
    SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.random_seed)
    return result


def check_models(args, positive: tuple[str, ...]) -> tuple[str, str | None]:
    """(our backend, our model directory or None) from the model flags (shared with ckpt-mmlu and
    ckpt-perplexity); the flags named in ``positive`` must be >= 1 when given."""
    if not (args.test_trt_llm or args.test_hf):
        raise SummarizeError("nothing to evaluate: pass --test_trt_llm (our model) and/or --test_hf (transformers)")
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SummarizeError(f"--{name}: must be >= 1 (got {getattr(args, name)})")
    backend = args.backend or ("trt" if args.engine_dir else "torch")
    model_dir = args.engine_dir if backend == "trt" else args.checkpoint_dir
    if args.test_trt_llm and not model_dir:
        flag = "--engine_dir" if backend == "trt" else "--checkpoint_dir"
        raise SummarizeError(f"--test_trt_llm with --backend {backend} needs {flag}")
    if args.test_hf and not args.hf_model_dir:
        raise SummarizeError("--test_hf needs --hf_model_dir")
    return backend, model_dir if args.test_trt_llm else None


def model_config(backend: str, model_dir: str) -> CheckpointConfig:
    """The engine's or checkpoint's config (ckptfmt's reader, checked), without loading weights."""
    if backend == "trt":
        from ckptfmt.engine import load_engine_config

        return load_engine_config(model_dir).checkpoint_config
    from ckptfmt import load_config

    return load_config(model_dir)


def model_limits(backend: str, model_dir: str) -> tuple[int, int | None]:
    """(vocab_size, max_position_embeddings) from the engine's or checkpoint's config, without loading weights."""
    config = model_config(backend, model_dir)
    return config.vocab_size, config.max_position_embeddings


def hf_config(hf_dir: str) -> dict:
    """A Hugging Face config.json (a multimodal one's ``text_config`` merged under its top level)."""
    path = Path(hf_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SummarizeError(f"{path}: missing (not a Hugging Face model directory)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SummarizeError(f"{path}: cannot read ({err})") from None
    if not isinstance(config, dict):
        raise SummarizeError(f"{path}: not a JSON object")
    text_config = config.get("text_config")
    return {**(text_config if isinstance(text_config, dict) else {}), **config}


def hf_limits(hf_dir: str) -> tuple[int, int | None]:
    """(vocab_size, max positions) from a Hugging Face config.json."""
    path = Path(hf_dir) / "config.json"
    config = hf_config(hf_dir)
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int):
        raise SummarizeError(f"{path}: vocab_size: missing")
    positions = config.get("max_position_embeddings", config.get("n_positions"))
    return vocab, positions if isinstance(positions, int) else None


def fit_lengths(args, positions: dict[str, int | None]) -> None:
    """Make prompt + summary fit every tested model's positions: the default --max_input_length is lowered
    (one notice), an explicit one that does not fit is an error naming the flag and the model's limit."""
    known = {name: n for name, n in positions.items() if n}
    if not known:
        args.max_input_length = args.max_input_length or DEFAULT_MAX_INPUT_LENGTH
        return
    name, limit = min(known.items(), key=lambda item: item[1])
    if args.output_len >= limit:
        raise SummarizeError(
            f"--output_len {args.output_len}: {name} has max_position_embeddings {limit}, which leaves no "
            "room for the prompt; pass a smaller --output_len"
        )
    room = limit - args.output_len
    if args.max_input_length is None:
        args.max_input_length = DEFAULT_MAX_INPUT_LENGTH
        if room < DEFAULT_MAX_INPUT_LENGTH:
            args.max_input_length = room
            log.warning(
                "--max_input_length lowered from its default %d to %d: %s has max_position_embeddings %d "
                "and --output_len is %d",
                DEFAULT_MAX_INPUT_LENGTH,
                room,
                name,
                limit,
                args.output_len,
            )
    elif args.max_input_length > room:
        raise SummarizeError(
            f"--max_input_length {args.max_input_length} + --output_len {args.output_len} exceed "
            f"max_position_embeddings {limit} of {name}; pass --max_input_length {room} or less"
        )


def tokenizer_dir(args, model_dir: str | None) -> str:
    """--tokenizer_dir, else the model directory (or its tokenizer/ folder) with tokenizer files, else the HF dir."""
    found = find_tokenizer_dir(args.tokenizer_dir, model_dir, args.hf_model_dir)
    if found is None:
        raise missing_tokenizer(model_dir, "--tokenizer_dir or --hf_model_dir")
    return found


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


def open_runner(backend: str, model_dir: str, args):
    from .runner import ModelRunner

    options = {"dtype": args.data_type} if backend == "hf" else backend_options(args, backend)
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


def speed_line(ratio: dict[str, float], ours: str) -> str:
    return (
        f"speed: {ours} / {HF_NAME} tokens/s = {ratio['median']:.2f}x (batch by batch in turn, median of "
        f"{ratio['batches']} batches in order-balanced pairs; {ratio['overall']:.2f}x of the totals)"
    )


def prepare(args) -> dict:
    """Everything before the models run; errors here are the same on every rank. The cheap checks (flags,
    configs, lengths, where the tokenizer is, report directory, data) come before the first status line,
    the imports of torch and transformers after it."""
    backend, model_dir = check_args(args)
    limits = {model_dir: model_limits(backend, model_dir)} if model_dir else {}
    if args.test_hf:
        limits[args.hf_model_dir] = hf_limits(args.hf_model_dir)
    fit_lengths(args, {name: positions for name, (_, positions) in limits.items()})
    tok_dir = tokenizer_dir(args, model_dir)
    if args.report and detect_launch().rank == 0:
        check_output_dir(args.report, args.overwrite, report_inputs(args, model_dir, tok_dir))
    baseline = load_baseline(args.baseline, args.max_regression, "summarize")
    records = load_summarization_dataset(args.dataset)
    ours = f"ours ({backend})" if model_dir else None
    modes = quantization_labels(args, backend, model_dir, ours)
    tested = [f"{name}{f' from {model_dir}' if name == ours else ''} [{mode}]" for name, mode in modes.items()]
    log.info(
        "evaluating %s on %d batches of %d; loading tokenizer and models",
        " and ".join(tested),
        min(args.max_ite, -(-len(records) // args.batch_size)),
        args.batch_size,
    )
    tokenizer = load_tokenizer(tok_dir)
    check_tokenizer(tokenizer, tok_dir, {name: vocab for name, (vocab, _) in limits.items()})
    return {
        "backend": backend,
        "model_dir": model_dir,
        "ours": ours,
        "tok_dir": tok_dir,
        "tokenizer": tokenizer,
        "batches": make_batches(records, tokenizer, args),
        "baseline": baseline,
        "quantization": modes,
    }


def quantization_labels(args, backend: str, model_dir: str | None, ours: str | None) -> dict[str, str]:
    """Each tested system's quantization label (``quant_label``): ours from its checkpoint or engine config,
    transformers' from its config.json and --data_type."""
    modes = {ours: checkpoint_label(model_config(backend, model_dir).quantization)} if ours and model_dir else {}
    if args.test_hf:
        modes[HF_NAME] = hf_label(hf_config(args.hf_model_dir), args.data_type)
    return modes


def summarize(args) -> int:
    from .distributed import shutdown

    job = prepare(args)
    rank = detect_launch().rank
    batches, tokenizer, ours = job["batches"], job["tokenizer"], job["ours"]
    references = [ref for _, refs in batches for ref in refs]
    args.model_running = True
    systems = [(ours, open_runner(job["backend"], job["model_dir"], args))] if ours else []
    if args.test_hf and rank == 0:
        systems.append((HF_NAME, open_runner("hf", args.hf_model_dir, args)))
    settings = {
        "max_new_tokens": args.output_len,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "random_seed": args.random_seed,
    }
    runs = run_interleaved(
        systems,
        [prompts for prompts, _ in batches],
        tokenizer,
        settings,
        lambda index, runs: log.info(progress_line(index, len(batches), runs)),
    )
    args.model_running = False
    shutdown()
    if rank != 0:
        return 0
    scored = {
        name: {"quantization": job["quantization"][name], **scores(run, references)} for name, run in runs.items()
    }
    print_table(scored)
    ratio = speed_ratio(runs[ours], runs[HF_NAME]) if ours and HF_NAME in runs else None
    if ratio is not None:
        print(speed_line(ratio, ours))
    passed, gate_line = accuracy_gate(scored, ours, args.tensorrt_llm_rouge1_threshold)
    gates = [Gate(f"{ours or HF_NAME} ROUGE-1 threshold", passed, gate_line)] if args.check_accuracy else []
    if job["baseline"] is not None:
        gates += baseline_gates(job["baseline"], scored, ROUGE_METRICS)
    code = finish(args, "ckpt-summarize", scored, ROUGE_CHART.rows, gates)
    if args.report:
        results = report_results(args, job, scored, runs, ratio, (passed, gate_line), len(references))
        results["gates"] = [vars(gate) for gate in gates]
        inputs = report_inputs(args, job["model_dir"], job["tok_dir"])
        paths = write_report(args.report, results, overwrite=args.overwrite, inputs=inputs)
        print(f"report: {paths['results']} and {paths['chart']}")
    return code


def report_inputs(args, model_dir: str | None, tok_dir: str) -> list[str]:
    """What --report DIR must not replace or lie inside."""
    inputs = (model_dir, tok_dir, args.hf_model_dir, args.dataset, args.baseline)
    return [d for d in inputs if d and Path(d).exists()]


def report_results(args, job: dict, systems: dict, runs: dict[str, SystemRun], ratio, gate, articles: int) -> dict:
    """The content of results.json."""
    settings = {k: v for k, v in vars(args).items() if k not in ("report", "model_running")}
    return {
        "task": "summarize",
        "settings": {**settings, "backend": job["backend"], "tokenizer_dir": job["tok_dir"]},
        "dataset": {"source": args.dataset or "shipped cnn_dailymail_mini", "articles": articles},
        "systems": systems,
        "speed_ratio": ratio,
        "timings": {
            run.name: {
                "seconds_per_batch": run.seconds,
                "new_tokens_per_batch": run.batch_tokens,
                "order": "interleaved",
            }
            for run in runs.values()
        },
        "accuracy": {
            "checked": args.check_accuracy,
            "threshold": args.tensorrt_llm_rouge1_threshold,
            "passed": gate[0],
            "summary": gate[1],
        },
        "predictions": {run.name: run.predictions for run in runs.values()},
    }


def fail(message: str, peers_print: bool) -> int:
    """One line on stderr, exit status 2 (``gates.EXIT_USAGE``: usage or input error).

    Under mpirun rank 0 prints at once; the other ranks wait a moment first, because mpirun stops the whole
    job as soon as one rank exits non-zero and rank 0 must have spoken by then. Up to the model run every
    rank meets the same flags and inputs, so the others stay silent; while the model runs (``peers_print``)
    a failing peer prints its own line, as rank 0 may instead be waiting for it in a collective, and stops
    the job.
    """
    launch = detect_launch()
    if launch.rank == 0:
        print(f"error: {message}", file=sys.stderr)
    else:
        time.sleep(2.0)
        if peers_print:
            print(f"error (rank {launch.rank}): {message}", file=sys.stderr)
    if launch.world_size > 1 and peers_print:
        from .distributed import abort

        abort(EXIT_USAGE)
    return EXIT_USAGE


class StderrHandler(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each message (tests capture by replacing it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str, prog: str = "ckpt-summarize") -> None:
    """Progress lines on stderr, prefixed ``[prog]``; only rank 0 below warnings."""
    log.setLevel(level.upper() if detect_launch().rank == 0 else "WARNING")
    handler = next((h for h in log.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        log.addHandler(handler)
        log.propagate = False
    handler.setFormatter(logging.Formatter(f"[{prog}] %(message)s"))


def main(argv: list[str] | None = None) -> int:
    """The ``ckpt-summarize`` console script."""
    return run_main(_main, argv, prog="ckpt-summarize")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.model_running = False  # set once our model is being opened (see ``fail``)
    setup_logging(args.log_level)
    try:
        return summarize(args)
    except (SummarizeError, CheckpointError, RunnerError, DatasetError, ReportError, GateError) as err:
        return fail(str(err).splitlines()[0] if str(err) else type(err).__name__, args.model_running)


if __name__ == "__main__":
    sys.exit(main())
