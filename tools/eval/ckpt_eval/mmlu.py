"""``ckpt-mmlu``: multiple-choice accuracy (MMLU layout) of our model (engine or checkpoint) and of transformers.

Follows TensorRT-LLM's ``mmlu.py``: ``--data_dir`` with ``dev/`` and ``test/`` CSVs, ``--ntrain`` few-shot
examples per prompt (fewer when the prompt would exceed ``--max_input_length``), accuracy per subject, per
category and overall, ``--check_accuracy`` fails (exit 1) below ``--accuracy_threshold`` (percent). Each
question is one forward pass: the answer is the letter (" A" .. " D") with the highest log-probability at the
prompt's last position, so no sampling is involved and every backend (engines included) scores the same way.
Without ``--data_dir`` the small set shipped with ckpt_eval runs (written for this project).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .gates import Metric, threshold_gate
from .launch import detect_launch
from .mmlu_data import CHOICES, DataError, Subject, load_subjects
from .report import Chart, print_table
from .task_cli import (
    TaskError,
    add_model_flags,
    conclude,
    load_checked_tokenizer,
    open_systems,
    prepare_models,
    task_main,
)

log = logging.getLogger("ckpt_eval")
DEFAULT_MAX_INPUT_LENGTH = 2048
ACCURACY = Metric("accuracy", "accuracy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckpt-mmlu", description=__doc__.splitlines()[0])
    p.add_argument(
        "--data_dir", help="MMLU layout: dev/<subject>_dev.csv and test/<subject>_test.csv (default: shipped)"
    )
    p.add_argument("--ntrain", type=int, default=5, help="few-shot examples per prompt (from dev/)")
    p.add_argument("--max_input_length", type=int, help="prompt tokens (default 2048, lowered to fit the models)")
    p.add_argument("--check_accuracy", action="store_true", help="exit 1 when accuracy < --accuracy_threshold")
    p.add_argument("--accuracy_threshold", type=float, default=30.0, help="percent (default 30)")
    add_model_flags(p)
    return p


def letter_ids(tokenizer) -> list[int]:
    """The token of " A" .. " D" (the answer as it follows "Answer:"); they must be four distinct tokens."""
    ids = [tokenizer.encode(f" {letter}", add_special_tokens=False)[-1] for letter in CHOICES]
    if len(set(ids)) != len(ids):
        raise TaskError(f"the tokenizer maps the answer letters to tokens {ids}, not four distinct ones")
    return ids


def encode(subject: Subject, question, tokenizer, shots: int, limit: int) -> list[int]:
    """The prompt's tokens with as many of ``shots`` examples as fit ``limit``; the question's tail if none do."""
    for k in range(shots, -1, -1):
        ids = tokenizer(subject.prompt(question, k)).input_ids
        if len(ids) <= limit:
            return ids
    return ids[-limit:]


def fit_length(args, limits: dict) -> int:
    known = [positions for _, positions in limits.values() if positions]
    room = min(known) - 1 if known else DEFAULT_MAX_INPUT_LENGTH  # one position for the answer
    if args.max_input_length is None:
        return min(DEFAULT_MAX_INPUT_LENGTH, room)
    if not 1 <= args.max_input_length <= room:
        raise TaskError(f"--max_input_length {args.max_input_length}: must be 1..{room} for the tested models")
    return args.max_input_length


def run_systems(systems, prompts: list, letters: list[int], batch_size: int) -> dict[str, dict]:
    """Each batch on each system in turn (alternating order): predicted letter indices and timings."""
    import torch

    runs: dict[str, dict[str, list]] = {
        name: {"choices": [], "logprobs": [], "seconds": [], "tokens": []} for name, _ in systems
    }
    for index, start in enumerate(range(0, len(prompts), batch_size)):
        batch = [torch.tensor(p) for p in prompts[start : start + batch_size]]
        for name, runner in systems if index % 2 == 0 else systems[::-1]:
            begin = time.perf_counter()
            lp = runner.next_logprobs(batch, letters)
            runs[name]["seconds"].append(time.perf_counter() - begin)
            runs[name]["tokens"].append(sum(p.numel() for p in batch))
            runs[name]["choices"] += lp.argmax(-1).tolist()
            runs[name]["logprobs"] += lp.tolist()
    return runs


def accuracies(run: dict, questions: list) -> dict[str, float]:
    """accuracy, category:<name> and subject:<name> in percent, plus speed."""
    groups: dict[str, list[bool]] = {}
    for (subject, question), choice in zip(questions, run["choices"]):
        right = CHOICES[choice] == question.answer
        for key in ("accuracy", f"category:{subject.category}", f"subject:{subject.name}"):
            groups.setdefault(key, []).append(right)
    scores = {key: 100.0 * sum(v) / len(v) for key, v in groups.items()}
    total = sum(run["seconds"])
    return {**scores, "tokens_per_s": sum(run["tokens"]) / total, "latency_per_batch_s": total / len(run["seconds"])}


def chart_for(subjects: list[Subject]) -> Chart:
    cats = sorted({s.category for s in subjects})
    rows = {"accuracy": "accuracy (%)", **{f"category:{c}": c for c in cats}}
    return Chart({**rows, **{f"subject:{s.name}": s.name for s in subjects}}, "mmlu.png", "Accuracy", "percent")


def evaluate(args) -> int:
    from .distributed import shutdown

    if args.ntrain < 0:
        raise TaskError(f"--ntrain: must be >= 0 (got {args.ntrain})")
    job = prepare_models(args, "mmlu", args.data_dir)
    job["metrics"] = [ACCURACY]
    subjects = load_subjects(args.data_dir, args.ntrain)
    limit = fit_length(args, job["limits"])
    questions = [(s, q) for s in subjects for q in s.test]
    log.info(
        "evaluating %d questions of %d subjects, %d-shot; loading tokenizer and models",
        len(questions),
        len(subjects),
        args.ntrain,
    )
    tokenizer = load_checked_tokenizer(job)
    letters = letter_ids(tokenizer)
    prompts = [encode(s, q, tokenizer, args.ntrain, limit) for s, q in questions]
    runs = run_systems(open_systems(args, job), prompts, letters, args.batch_size)
    args.model_running = False
    shutdown()
    if detect_launch().rank != 0:
        return 0
    systems = {name: accuracies(run, questions) for name, run in runs.items()}
    chart = chart_for(subjects)
    print_table(systems, chart=chart)
    ours = job["ours"] or next(iter(systems))
    gates = (
        [threshold_gate(ours, ACCURACY, systems[ours]["accuracy"], args.accuracy_threshold)]
        if args.check_accuracy
        else []
    )
    results = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("report", "model_running")},
        "dataset": {
            "source": args.data_dir or "shipped mmlu_mini",
            "questions": len(questions),
            "subjects": len(subjects),
        },
        "timings": {
            name: {"seconds_per_batch": r["seconds"], "prompt_tokens_per_batch": r["tokens"]}
            for name, r in runs.items()
        },
        "questions": [{"subject": s.name, "answer": q.answer} for s, q in questions],
        "predictions": {name: [CHOICES[c] for c in r["choices"]] for name, r in runs.items()},
        "letter_logprobs": {name: r["logprobs"] for name, r in runs.items()},
    }
    return conclude(args, job, "mmlu", systems, gates, results, chart)


_main = task_main(evaluate, build_parser, "ckpt-mmlu", (DataError,))


def main(argv: list[str] | None = None) -> int:
    from ckptfmt.entry import run_main

    return run_main(_main, argv, prog="ckpt-mmlu")


if __name__ == "__main__":
    sys.exit(main())
