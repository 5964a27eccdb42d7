"""``ckpt-eval``: the eval image's command. Without arguments it runs the CI gates named by environment
variables over the mounted volume; ``ckpt-eval TASK ARGS...`` runs one tool; arguments that start with ``-``
go to ckpt-summarize (what the image ran before, so existing compose commands keep working).

Gates (every variable optional):

    EVAL_TASKS            summarize,mmlu,perplexity (the default; any subset, in that order)
    MODEL_NAME            model; EVAL_BACKEND torch (checkpoint) or trt (engine)
    EVAL_MODEL_DIR        /data/checkpoints/$MODEL_NAME (torch) or /data/engines/$MODEL_NAME (trt)
    TOKENIZER_DIR         default: the model directory's tokenizer (see --tokenizer_dir)
    EVAL_REPORT_DIR       /data/reports/$MODEL_NAME: <task>/ reports, junit-<task>.xml, summary.md
    ROUGE1_THRESHOLD 15, MMLU_THRESHOLD 30 (percent), PERPLEXITY_THRESHOLD 100; empty: no threshold gate
    EVAL_BASELINE_DIR     an earlier EVAL_REPORT_DIR: each task compares with its <task>/results.json
    MAX_REGRESSION        allowed drop against the baseline (a number, or N% of the baseline value)
    MAX_ITE 20, OUTPUT_LEN 64, MAX_INPUT_LEN (summarize); EVAL_ARGS (every task), SUMMARIZE_ARGS,
    MMLU_ARGS, PERPLEXITY_ARGS (one task each)

Every task runs even when an earlier one failed; the exit status is 2 if any task had a usage or input
error, else 1 if any gate failed, else 0. The Markdown of every task goes to summary.md (and to
``$GITHUB_STEP_SUMMARY`` when that is set).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from pathlib import Path

from ckptfmt.entry import run_main

from .gates import EXIT_PASS, EXIT_USAGE, SUMMARY_ENV

TOOLS = {
    "summarize": ("ckpt_eval.summarize:_main", "ckpt-summarize"),
    "mmlu": ("ckpt_eval.mmlu:_main", "ckpt-mmlu"),
    "perplexity": ("ckpt_eval.perplexity:_main", "ckpt-perplexity"),
    "run": ("ckpt_eval.run_cli:_main", "ckpt-run"),
    "lm-eval": ("ckpt_eval.lm_eval_model:main", "ckpt-lm-eval"),
}
GATED = ("summarize", "mmlu", "perplexity")
THRESHOLDS = {
    "summarize": ("ROUGE1_THRESHOLD", "15", "--tensorrt_llm_rouge1_threshold"),
    "mmlu": ("MMLU_THRESHOLD", "30", "--accuracy_threshold"),
    "perplexity": ("PERPLEXITY_THRESHOLD", "100", "--perplexity_threshold"),
}


def task_argv(task: str, env: dict[str, str]) -> list[str]:
    """The command line of one gated task from the environment."""
    name = env.get("MODEL_NAME") or "model"
    backend = env.get("EVAL_BACKEND") or "torch"
    default_dir = f"/data/{'engines' if backend == 'trt' else 'checkpoints'}/{name}"
    model_flag = "--engine_dir" if backend == "trt" else "--checkpoint_dir"
    reports = Path(env.get("EVAL_REPORT_DIR") or f"/data/reports/{name}")
    argv = [model_flag, env.get("EVAL_MODEL_DIR") or default_dir, "--backend", backend, "--test_trt_llm"]
    argv += ["--tokenizer_dir", env["TOKENIZER_DIR"]] if env.get("TOKENIZER_DIR") else []
    argv += ["--report", str(reports / task), "--overwrite", "--junit_xml", str(reports / f"junit-{task}.xml")]
    variable, default, flag = THRESHOLDS[task]
    threshold = env.get(variable, default)
    argv += ["--check_accuracy", flag, threshold] if threshold else []
    if env.get("EVAL_BASELINE_DIR"):
        argv += ["--baseline", str(Path(env["EVAL_BASELINE_DIR"]) / task / "results.json")]
        argv += ["--max_regression", env["MAX_REGRESSION"]] if env.get("MAX_REGRESSION") else []
    if task == "summarize":
        argv += ["--max_ite", env.get("MAX_ITE") or "20", "--output_len", env.get("OUTPUT_LEN") or "64"]
        argv += ["--max_input_length", env["MAX_INPUT_LEN"]] if env.get("MAX_INPUT_LEN") else []
    return argv + shlex.split(env.get("EVAL_ARGS", "")) + shlex.split(env.get(f"{task.upper()}_ARGS", ""))


def run_gates(env: dict[str, str]) -> int:
    """Every task of EVAL_TASKS in turn; the combined exit status (see the module doc)."""
    tasks = [t.strip() for t in (env.get("EVAL_TASKS") or ",".join(GATED)).split(",") if t.strip()]
    unknown = [t for t in tasks if t not in GATED]
    if unknown or not tasks:
        print(
            f"error: EVAL_TASKS: unknown task {unknown[0] if unknown else '(none)'} (choose from {', '.join(GATED)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    reports = Path(env.get("EVAL_REPORT_DIR") or f"/data/reports/{env.get('MODEL_NAME') or 'model'}")
    try:
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "summary.md").write_text("")
    except OSError as err:
        print(f"error: EVAL_REPORT_DIR {reports}: cannot write ({err.strerror or err})", file=sys.stderr)
        return EXIT_USAGE
    codes = {}
    for task in tasks:
        print(f"== ckpt-{task}", flush=True)
        codes[task] = run_task(task, task_argv(task, env), str(reports / "summary.md"))
    outer = env.get(SUMMARY_ENV)
    if outer:
        with open(outer, "a", encoding="utf-8") as f:
            f.write((reports / "summary.md").read_text())
    print("gates: " + ", ".join(f"{t} {verdict(c)}" for t, c in codes.items()))
    return EXIT_USAGE if EXIT_USAGE in codes.values() else max(codes.values())


def run_task(task: str, argv: list[str], summary: str) -> int:
    """One task in this process with its step summary going to ``summary``."""
    saved = os.environ.get(SUMMARY_ENV)
    os.environ[SUMMARY_ENV] = summary
    try:
        return run_main(TOOLS[task][0], argv, prog=TOOLS[task][1])
    finally:
        if saved is None:
            os.environ.pop(SUMMARY_ENV, None)
        else:
            os.environ[SUMMARY_ENV] = saved


def verdict(code: int) -> str:
    return {EXIT_PASS: "passed", 1: "FAILED"}.get(code, f"ERROR (exit {code})")


def main(argv: list[str] | None = None) -> int:
    """``ckpt-eval``: gates from the environment, one tool, or ckpt-summarize's flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return EXIT_PASS
    if not argv or argv == ["gates"]:
        return run_gates(dict(os.environ))
    if argv[0] == "lm-eval" and importlib.util.find_spec("lm_eval") is None:
        print("error: lm-eval is not installed (pip install 'ckpt-eval[harness]')", file=sys.stderr)
        return EXIT_USAGE
    if argv[0] in TOOLS:
        module, prog = TOOLS[argv[0]]
        return run_main(module, argv[1:], prog=prog)
    if argv[0].startswith("-"):
        return run_main(TOOLS["summarize"][0], argv, prog="ckpt-summarize")
    print(f"error: unknown command {argv[0]!r} (choose from gates, {', '.join(TOOLS)}; see --help)", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
