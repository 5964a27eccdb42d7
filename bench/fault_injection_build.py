"""SIGKILL ckpt-build at random moments of a 2-worker build of a tiny tp-2 checkpoint; check what each kill leaves.

After every kill: no process of the build survives (the process tree sampled until the kill, and every process
carrying the trial's environment marker), the output is absent or a valid engine directory
(``check_engine_dir(out, hash_files=True)``), and the next run on the same output (``--overwrite`` when one is
there) succeeds and leaves nothing beside the output. Odd trials kill an ``--overwrite`` run over the previous
trial's engines, even ones a fresh build. One line per trial, then a summary; exit 1 if any trial failed.

    python bench/fault_injection_build.py [--trials 20] [--seed 0] [--layers 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CKPT_BUILD = str(Path(sys.executable).parent / "ckpt-build")
LIMITS = ["--max_batch_size", "2", "--max_input_len", "16", "--max_output_len", "8", "--target", "sm86"]
MARKER = "CKPT_FAULT_TRIAL"  # environment variable every process of a trial inherits


@dataclass
class Trial:
    delay: float  # seconds after the start the kill was due
    overwrite: bool
    killed_at: float = 0.0  # seconds after the start it was sent (0: the build had finished before)
    phase: str = ""  # the build's last log line before the kill
    processes: int = 0  # processes of the build seen before the kill
    survivors: list[int] = field(default_factory=list)
    gone_s: float = 0.0  # seconds from the kill until every process was gone
    after_kill: str = ""  # absent | valid | INVALID: ...
    beside: list[str] = field(default_factory=list)  # what the kill left beside the output
    rerun_s: float = 0.0
    problems: list[str] = field(default_factory=list)


def make_checkpoint(path: Path, layers: int = 2) -> Path:
    """A random tiny LLaMA (hidden 64, GQA) checkpoint with tp 2."""
    sys.path.insert(0, str(ROOT))
    from tests.build.checkpoints import layout_config, random_checkpoint

    return random_checkpoint(path, layout_config("llama-gqa", tp=2, num_hidden_layers=layers))


def command(ckpt: Path, out: Path, overwrite: bool) -> list[str]:
    cmd = [CKPT_BUILD, "--checkpoint_dir", str(ckpt), "--output_dir", str(out), *LIMITS, "--workers", "2"]
    return cmd + (["--overwrite"] if overwrite else [])


def measure(ckpt: Path, out: Path) -> float:
    """Seconds of one complete build (imports included): the span the kills are spread over."""
    start = time.monotonic()
    proc = subprocess.run(command(ckpt, out, out.exists()), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the build to measure failed: {proc.stderr}")
    return time.monotonic() - start


def beside(out: Path) -> list[str]:
    """Entries next to the output that belong to runs on it (temp dirs, old outputs, the lock)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def kill_build(ckpt: Path, out: Path, delay: float, overwrite: bool, marker: str = "") -> Trial:
    """Start a 2-worker build, SIGKILL it ``delay`` s later (or once its log shows ``marker``, then ``delay`` s
    later); returns what the kill left: processes, the output, what lies beside it."""
    trial, tag = Trial(delay, overwrite), uuid.uuid4().hex
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            command(ckpt, out, overwrite),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, MARKER: tag},
            start_new_session=True,
        )
        seen: dict[int, psutil.Process] = {proc.pid: psutil.Process(proc.pid)}
        start = time.monotonic()
        due = float("inf") if marker else start + delay
        while proc.poll() is None and time.monotonic() < due:
            _sample(proc.pid, seen)
            if due == float("inf") and marker in _read(log):
                due = time.monotonic() + delay  # the delay counts from the marker
            time.sleep(0.01)
        trial.phase = _last_line(_read(log))
        if proc.poll() is None:
            trial.killed_at = time.monotonic() - start
            os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
    trial.processes = len(seen)
    # a worker spawned just before the kill may be missing from the samples: the marker finds it, and it gets the
    # same time to end as the others (it may still be importing, before it can notice that its parent is gone)
    for p in _marked(tag):
        seen.setdefault(p.pid, p)
    alive = wait_gone([p for pid, p in seen.items() if pid != proc.pid], timeout=10)
    alive += [p for p in _marked(tag) if p.pid not in seen and _running(p)]
    trial.gone_s = time.monotonic() - killed
    trial.survivors = [p.pid for p in alive]
    for p in alive:  # leave nothing running, whatever the verdict
        p.kill()
    trial.after_kill = _state(out)
    trial.beside = beside(out)
    return trial


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of ``processes`` runs; returns those still running after ``timeout`` s. A zombie (dead,
    not yet reaped by the init process it was handed to) counts as gone."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in processes if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.005)
    return alive


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sample(pid: int, seen: dict[int, psutil.Process]) -> None:
    try:
        for child in psutil.Process(pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        pass


def _marked(tag: str) -> list[psutil.Process]:
    """Processes whose environment carries this trial's marker (children inherit it)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(MARKER) == tag:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def _read(log) -> str:
    log.seek(0)
    return log.read()


def _last_line(text: str) -> str:
    lines = [line.removeprefix("[ckpt-build] INFO ") for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "(starting)")[:70]


def _state(out: Path) -> str:
    from ckptfmt.engine import check_engine_dir
    from ckptfmt.errors import CheckpointError

    if not out.exists():
        return "absent"
    try:
        check_engine_dir(out, hash_files=True)
    except CheckpointError as err:
        return f"INVALID: {err}"
    return "valid"


def rerun(ckpt: Path, out: Path, trial: Trial) -> None:
    """The next run on the same output succeeds and leaves only the published directory; problems go to ``trial``."""
    start = time.monotonic()
    proc = subprocess.run(command(ckpt, out, out.exists()), capture_output=True, text=True)
    trial.rerun_s = time.monotonic() - start
    if proc.returncode != 0:
        trial.problems.append(f"rerun exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    if (state := _state(out)) != "valid":
        trial.problems.append(f"after the rerun the output is {state}")
    if beside(out):
        trial.problems.append(f"after the rerun beside the output: {beside(out)}")


def judge(trial: Trial) -> None:
    if trial.survivors:
        trial.problems.append(f"processes survived the kill: {trial.survivors}")
    elif trial.gone_s > 5:
        trial.problems.append(f"processes took {trial.gone_s:.1f} s to end")
    if trial.after_kill.startswith("INVALID"):
        trial.problems.append(f"after the kill the output is {trial.after_kill}")


def run_trials(ckpt: Path, out: Path, delays: list[float], report=print) -> list[Trial]:
    """One kill + rerun per delay; odd trials overwrite the previous trial's engines."""
    trials = []
    for i, delay in enumerate(delays):
        overwrite = i % 2 == 1
        if not overwrite and out.exists():
            shutil.rmtree(out)
        if overwrite and not out.exists():
            rerun(ckpt, out, Trial(0, False))  # an output to overwrite
        trial = kill_build(ckpt, out, delay, overwrite)
        judge(trial)
        rerun(ckpt, out, trial)
        trials.append(trial)
        report(_row(i, trial))
    return trials


HEADER = (
    f"{'#':>2} {'mode':9} {'kill at':>8} {'procs':>5} {'gone':>6} {'output':8} {'beside after kill':34} {'rerun':>6} "
)
HEADER += "verdict | last log line before the kill"


def _row(i: int, t: Trial) -> str:
    at = f"{t.killed_at:.2f}s" if t.killed_at else "(done)"
    left = ",".join(name.split("-")[0] if ".tmp-" in name else name for name in t.beside) or "-"
    verdict = "ok" if not t.problems else "FAIL: " + "; ".join(t.problems)
    mode = "overwrite" if t.overwrite else "fresh"
    after = t.after_kill.split(":")[0]
    return (
        f"{i:>2} {mode:9} {at:>8} {t.processes:>5} {t.gone_s:>5.2f}s {after:8} {left:34} {t.rerun_s:>5.1f}s "
        f"{verdict} | {t.phase}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the tiny checkpoint")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed after")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fault-build-"))
    try:
        ckpt = make_checkpoint(work / "ckpt", args.layers)
        out = work / "engine"
        duration = measure(ckpt, out)
        rng = random.Random(args.seed)
        delays = sorted(rng.uniform(0, duration) for _ in range(args.trials))
        rng.shuffle(delays)
        print(f"one build: {duration:.2f} s; {args.trials} kills at random moments in it (seed {args.seed})")
        print(HEADER)
        trials = run_trials(ckpt, out, delays)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    failed = [t for t in trials if t.problems]
    outputs = {s: sum(t.after_kill.split(":")[0] == s for t in trials) for s in ("absent", "valid", "INVALID")}
    finished = sum(not t.killed_at for t in trials)
    print(
        f"summary: {len(trials)} trials ({len(trials) - finished} killed mid-build, {finished} finished before their "
        f"moment), {len(trials) - len(failed)} ok, {len(failed)} failed; output after the kill: "
        f"{outputs['absent']} absent, {outputs['valid']} valid, {outputs['INVALID']} invalid; "
        f"slowest end of all processes {max(t.gone_s for t in trials):.2f} s; every rerun succeeded: "
        f"{'yes' if not any('rerun' in p for t in trials for p in t.problems) else 'no'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
