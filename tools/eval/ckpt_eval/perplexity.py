"""``ckpt-perplexity``: token-level negative log-likelihood of our model (engine or checkpoint) and of
transformers over the same tokens of a text file or dataset, per document and overall.

Each document is tokenized once and scored in windows of at most ``--max_length`` tokens: the first window
scores its tokens 2..N, each later window scores the next ``--stride`` tokens with the tokens before them
(up to the window length) as context, so every token after the first is scored exactly once. Perplexity is
``exp(total NLL / scored tokens)``. ``--check_accuracy`` fails (exit 1) above ``--perplexity_threshold``.
Without ``--dataset`` the short texts shipped with ckpt_eval run (written for this project).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .gates import Metric, threshold_gate
from .launch import detect_launch
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
SHIPPED_FILE = "perplexity_mini.jsonl"
DEFAULT_MAX_LENGTH = 1024
PERPLEXITY = Metric("perplexity", "perplexity", higher_is_better=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckpt-perplexity", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help=".txt file (one document), directory of .txt files, .json or .jsonl records")
    p.add_argument("--text_field", default="text", help="field of a .json/.jsonl record holding its text")
    p.add_argument("--max_length", type=int, help="tokens per window (default 1024, at most the model's positions)")
    p.add_argument("--stride", type=int, help="new tokens scored per later window (default max_length / 2)")
    p.add_argument("--check_accuracy", action="store_true", help="exit 1 when perplexity > --perplexity_threshold")
    p.add_argument("--perplexity_threshold", type=float, default=100.0)
    add_model_flags(p)
    return p


@dataclass
class Window:
    document: int
    tokens: list[int]
    start: int  # first scored token in ``tokens``


def read_documents(path: str | None, field: str) -> list[tuple[str, str]]:
    """(name, text) of each document; one ``TaskError`` naming the file and record for bad input."""
    if path is None:
        with resources.as_file(resources.files("ckpt_eval") / "data" / SHIPPED_FILE) as shipped:
            return read_documents(str(shipped), "text")
    source = Path(path)
    if source.is_dir():
        files = sorted(source.glob("*.txt"))
        if not files:
            raise TaskError(f"{source}: no .txt files")
        return [(f.name, read_text(f)) for f in files]
    if source.suffix.lower() not in (".json", ".jsonl"):
        return [(source.name, read_text(source))]
    text = read_text(source)
    try:
        records = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if source.suffix.lower() == ".jsonl"
            else json.loads(text)
        )
    except json.JSONDecodeError as err:
        raise TaskError(f"{source}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(records, list) or not records:
        raise TaskError(f"{source}: expected a non-empty list of records")
    docs = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise TaskError(f"{source}: record {i}: no text field {field!r} (pass --text_field)")
        docs.append((str(record.get("title", record.get("id", i))), record[field]))
    return docs


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"{path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TaskError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None


def windows(document: int, ids: list[int], max_length: int, stride: int) -> list[Window]:
    """Windows scoring every token after the first exactly once (see the module doc)."""
    out = [Window(document, ids[:max_length], 1)]
    done = len(out[0].tokens)
    while done < len(ids):
        end = min(done + stride, len(ids))
        begin = max(0, end - max_length)
        out.append(Window(document, ids[begin:end], done - begin))
        done = end
    return out


def fit_window(args, limits: dict) -> tuple[int, int]:
    """(max_length, stride) checked against each other and the tested models' positions."""
    known = [positions for _, positions in limits.values() if positions]
    room = min(known) if known else None
    max_length = args.max_length or min(DEFAULT_MAX_LENGTH, room or DEFAULT_MAX_LENGTH)
    if max_length < 2 or (room and max_length > room):
        raise TaskError(f"--max_length {max_length}: must be 2..{room or 'any'} (the tested models' positions)")
    stride = args.stride or max(1, max_length // 2)
    if not 1 <= stride < max_length:
        raise TaskError(f"--stride {stride}: must be 1..{max_length - 1} (less than --max_length {max_length})")
    return max_length, stride


def tokenize(docs: list[tuple[str, str]], tokenizer, source: str) -> list[list[int]]:
    out = []
    for i, (name, text) in enumerate(docs):
        ids = tokenizer(text).input_ids
        if len(ids) < 2:
            raise TaskError(
                f"{source}: document {i} ({name}): {len(ids)} token(s), shorter than one window "
                "(a window needs a context token and a scored token)"
            )
        out.append(ids)
    return out


def run_systems(systems, batches: list[list[Window]], documents: int) -> dict[str, dict]:
    """Every batch of windows on each system in turn: NLL and scored tokens per document, timings."""
    import torch

    runs: dict[str, dict[str, list]] = {
        name: {"nll": [0.0] * documents, "tokens": [0] * documents, "seconds": [], "scored": []} for name, _ in systems
    }
    for index, batch in enumerate(batches):
        seqs, starts = [torch.tensor(w.tokens) for w in batch], [w.start for w in batch]
        for name, runner in systems if index % 2 == 0 else systems[::-1]:
            begin = time.perf_counter()
            scores = runner.score(seqs, starts)
            runs[name]["seconds"].append(time.perf_counter() - begin)
            runs[name]["scored"].append(sum(s.logprobs.numel() for s in scores))
            for w, s in zip(batch, scores):
                runs[name]["nll"][w.document] -= s.total
                runs[name]["tokens"][w.document] += s.logprobs.numel()
    return runs


def perplexities(run: dict, names: list[str]) -> dict[str, float]:
    nll, tokens, seconds = sum(run["nll"]), sum(run["tokens"]), sum(run["seconds"])
    docs = {f"document:{name}": math.exp(n / t) for name, n, t in zip(names, run["nll"], run["tokens"])}
    return {
        "perplexity": math.exp(nll / tokens),
        "nll_per_token": nll / tokens,
        **docs,
        "tokens_per_s": sum(run["scored"]) / seconds,
        "latency_per_batch_s": seconds / len(run["seconds"]),
    }


def evaluate(args) -> int:
    from .distributed import shutdown

    job = prepare_models(args, "perplexity", args.dataset)
    job["metrics"] = [PERPLEXITY]
    max_length, stride = fit_window(args, job["limits"])
    docs = read_documents(args.dataset, args.text_field)
    log.info(
        "scoring %d documents in windows of %d (stride %d); loading tokenizer and models", len(docs), max_length, stride
    )
    tokenizer = load_checked_tokenizer(job)
    ids = tokenize(docs, tokenizer, args.dataset or SHIPPED_FILE)
    all_windows = [w for d, doc in enumerate(ids) for w in windows(d, doc, max_length, stride)]
    batches = [all_windows[i : i + args.batch_size] for i in range(0, len(all_windows), args.batch_size)]
    runs = run_systems(open_systems(args, job), batches, len(docs))
    args.model_running = False
    shutdown()
    if detect_launch().rank != 0:
        return 0
    names = [name for name, _ in docs]
    systems = {name: perplexities(run, names) for name, run in runs.items()}
    rows = {"perplexity": "perplexity", "nll_per_token": "NLL/token", **{f"document:{n}": n for n in names}}
    chart = Chart(rows, "perplexity.png", "Perplexity", "perplexity (lower is better)")
    print_table(systems, chart=chart)
    ours = job["ours"] or next(iter(systems))
    gates = []
    if args.check_accuracy:
        gates.append(threshold_gate(ours, PERPLEXITY, systems[ours]["perplexity"], args.perplexity_threshold))
    results = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("report", "model_running")},
            "max_length": max_length,
            "stride": stride,
        },
        "dataset": {
            "source": args.dataset or f"shipped {SHIPPED_FILE}",
            "documents": len(docs),
            "tokens": sum(map(len, ids)),
        },
        "timings": {
            name: {"seconds_per_batch": r["seconds"], "scored_tokens_per_batch": r["scored"]}
            for name, r in runs.items()
        },
        "documents": {
            name: [{"name": n, "tokens": t, "nll": x} for n, t, x in zip(names, r["tokens"], r["nll"])]
            for name, r in runs.items()
        },
    }
    return conclude(args, job, "perplexity", systems, gates, results, chart)


_main = task_main(evaluate, build_parser, "ckpt-perplexity")


def main(argv: list[str] | None = None) -> int:
    from ckptfmt.entry import run_main

    return run_main(_main, argv, prog="ckpt-perplexity")


if __name__ == "__main__":
    sys.exit(main())
