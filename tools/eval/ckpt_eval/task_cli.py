"""What ckpt-mmlu and ckpt-perplexity share with ckpt-summarize: model flags, opening the tested systems, the
report and gate flags, and the main wrapper (one ``error:`` line and exit 2 for bad input, see ``gates``).

Under ``mpirun -n N`` every rank runs our model; rank 0 also runs transformers, prints and writes the report.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from ckptfmt import CheckpointError, check_output_dir

from .backends import RunnerError
from .gates import GateError, add_gate_flags, baseline_gates, finish, load_baseline
from .launch import detect_launch
from .report import ReportError, write_report
from .run_cli import add_runner_flags
from .summarize import (
    HF_NAME,
    SummarizeError,
    check_models,
    check_tokenizer,
    dtype_arg,
    fail,
    hf_limits,
    model_limits,
    open_runner,
    setup_logging,
    tokenizer_dir,
)

log = logging.getLogger("ckpt_eval")
TaskError = SummarizeError  # bad flags or inputs: one line, exit 2
INPUT_ERRORS = (SummarizeError, CheckpointError, RunnerError, ReportError, GateError)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Which systems to test (TensorRT-LLM's flag names), report, gates, runner and log flags."""
    p.add_argument("--engine_dir", help="engine directory (ckpt-build output); backend trt")
    p.add_argument("--checkpoint_dir", help="checkpoint directory; backend torch")
    p.add_argument("--hf_model_dir", help="Hugging Face model directory (for --test_hf; also a tokenizer source)")
    p.add_argument("--tokenizer_dir", help="default: the engine/checkpoint directory's tokenizer, else --hf_model_dir")
    p.add_argument("--test_trt_llm", action="store_true", help="evaluate our model (engine or checkpoint)")
    p.add_argument("--test_hf", action="store_true", help="evaluate the Hugging Face model with transformers")
    p.add_argument("--backend", choices=["trt", "torch"], help="default: trt with --engine_dir, else torch")
    p.add_argument("--data_type", "--dtype", dest="data_type", default="fp16", type=dtype_arg, help="HF model dtype")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--report", metavar="DIR", help="write results.json, a chart and a manifest into the new DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier --report DIR")
    add_gate_flags(p)
    add_runner_flags(p)
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])


def report_inputs(args, model_dir: str | None, tok_dir: str, data: str | None) -> list[str]:
    """What --report DIR must not replace or lie inside."""
    paths = (model_dir, tok_dir, args.hf_model_dir, data, args.baseline)
    return [d for d in paths if d and Path(d).exists()]


def prepare_models(args, task: str, data: str | None) -> dict:
    """Flags, model limits, tokenizer location, baseline and report directory checked (``data``: the input
    data path, kept out of the report directory)."""
    backend, model_dir = check_models(args, ("batch_size",))
    limits = {model_dir: model_limits(backend, model_dir)} if model_dir else {}
    if args.test_hf:
        limits[args.hf_model_dir] = hf_limits(args.hf_model_dir)
    tok_dir = tokenizer_dir(args, model_dir)
    baseline = load_baseline(args.baseline, args.max_regression, task)
    if args.report and detect_launch().rank == 0:
        check_output_dir(args.report, args.overwrite, report_inputs(args, model_dir, tok_dir, data))
    return {
        "backend": backend,
        "model_dir": model_dir,
        "ours": f"ours ({backend})" if model_dir else None,
        "tok_dir": tok_dir,
        "limits": limits,
        "baseline": baseline,
        "inputs": report_inputs(args, model_dir, tok_dir, data),
    }


def load_checked_tokenizer(job: dict):
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(job["tok_dir"])
    check_tokenizer(tokenizer, job["tok_dir"], {name: vocab for name, (vocab, _) in job["limits"].items()})
    return tokenizer


def open_systems(args, job: dict) -> list[tuple[str, object]]:
    """(name, ModelRunner) of each tested system on this rank: ours on every rank, transformers on rank 0."""
    args.model_running = True
    systems = [(job["ours"], open_runner(job["backend"], job["model_dir"], args))] if job["ours"] else []
    if args.test_hf and detect_launch().rank == 0:
        systems.append((HF_NAME, open_runner("hf", args.hf_model_dir, args)))
    return systems


def conclude(args, job: dict, task: str, systems: dict, gates: list, results: dict, chart) -> int:
    """Baseline gates, the report, JUnit / step summary; the exit status (rank 0)."""
    if job["baseline"] is not None:
        gates = gates + baseline_gates(job["baseline"], systems, job["metrics"])
    results = {"task": task, **results, "systems": systems, "gates": [vars(g) for g in gates]}
    code = finish(args, f"ckpt-{task}", systems, chart.rows, gates)
    if args.report:
        paths = write_report(args.report, results, overwrite=args.overwrite, inputs=job["inputs"], chart=chart)
        print(f"report: {paths['results']} and {paths['chart']}")
    return code


def task_main(body: Callable, parser: Callable[[], argparse.ArgumentParser], prog: str, errors: tuple = ()) -> Callable:
    """The ``_main(argv)`` of a task CLI: parse, log, run ``body(args)``; one error line and exit 2 on bad input
    (``INPUT_ERRORS`` and the task's own ``errors``)."""

    def _main(argv: list[str] | None) -> int:
        args = parser().parse_args(argv)
        args.model_running = False
        setup_logging(args.log_level, prog)
        try:
            return body(args)
        except (*INPUT_ERRORS, *errors) as err:
            return fail(str(err).splitlines()[0] if str(err) else type(err).__name__, args.model_running)

    return _main
