"""SIGKILL at random moments of a 2-worker ``ckpt-convert hf`` run; after each kill the suite must have recovered.

    python bench/fault_injection.py [--n 20] [--layers 200] [--workers 2] [--rerun-workers N] [--seed 0] [--dir /tmp]

A tiny LLaMA of many layers (thousands of small tensors) is converted once to time a run (T) and to leave a valid
output. Then, N times: ``ckpt-convert hf --overwrite --workers 2 --tp_size 2`` on the same --output_dir is killed
with SIGKILL at a uniformly random moment in [0, 1.2 T], and

- no process of the run survives it by more than 5 s (its workers die with it),
- the output is absent or valid (``ckptfmt validate --require-manifest``): never half-written,
- the next run on the same output (``--overwrite``) succeeds, leaves a valid output and nothing beside it
  (the killed run's temp dir, ``.old-PID`` or lock reclaimed).

Prints one table row per kill and a summary; exit 0 when every kill passed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))


@dataclass
class Kill:
    at: float  # seconds after the start
    phase: str  # what the killed run had reached
    survivors: int
    output: str  # absent | valid | INVALID
    rerun: str  # ok | exit N
    left: list[str]  # beside the output after the rerun

    @property
    def passed(self) -> bool:
        return self.survivors == 0 and self.output != "INVALID" and self.rerun == "ok" and not self.left


def convert_cmd(model: Path, out: Path, workers: int) -> list[str]:
    return [
        str(BIN / "ckpt-convert"), "hf", "--model_dir", str(model), "--output_dir", str(out),
        "--tp_size", "2", "--workers", str(workers), "--overwrite", "--quiet",
    ]  # fmt: skip


def validate(out: Path) -> bool:
    """What ``ckptfmt validate --require-manifest OUT`` checks (in this process: no interpreter start per check)."""
    from ckptfmt import validate_checkpoint

    problems, _ = validate_checkpoint(out, require_manifest=True)
    return not problems


def beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def phase_of(out: Path, before: float) -> str:
    """What the run had reached: judged from the files beside the output."""
    tmp = [p for p in out.parent.glob(f".{out.name}.tmp-*") if p.is_dir()]
    if any(p.name.startswith(f".{out.name}.old-") for p in out.parent.iterdir()):
        return "publishing"
    if tmp and (tmp[0] / "manifest.json").exists():
        return "manifest"
    if tmp and list(tmp[0].glob("rank*.safetensors")):
        return "writing"
    if tmp:
        return "temp dir"
    if out.exists() and out.stat().st_mtime > before:
        return "published"
    return "starting"


def kill_once(model: Path, out: Path, workers: int, delay: float, rerun_workers: int) -> Kill:
    started = time.time()
    proc = subprocess.Popen(
        convert_cmd(model, out, workers),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        for p in _descendants(proc.pid):
            seen.setdefault(p.pid, p)
        time.sleep(0.005)
    for p in _descendants(proc.pid):
        seen.setdefault(p.pid, p)
    phase = phase_of(out, started)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    else:
        phase = "finished"
    proc.wait()
    _, alive = psutil.wait_procs(list(seen.values()), timeout=5)
    for p in alive:  # do not leave them behind for the next kill
        p.kill()
    output = "absent" if not out.exists() else "valid" if validate(out) else "INVALID"
    rerun = subprocess.run(convert_cmd(model, out, rerun_workers), capture_output=True, text=True)
    ok = rerun.returncode == 0 and validate(out)
    return Kill(delay, phase, len(alive), output, "ok" if ok else f"exit {rerun.returncode}", beside(out))


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run(n: int, layers: int, workers: int, seed: int, directory: str | None, rerun_workers: int = 0) -> list[Kill]:
    """Kill ``n`` runs; the table is printed as it goes. ``rerun_workers`` (default ``workers``) for the next runs."""
    from tests.reliability.conftest import make_llama

    with tempfile.TemporaryDirectory(prefix="fault-injection-", dir=directory) as tmp:
        model, out = make_llama(Path(tmp) / "model", layers=layers), Path(tmp) / "out"
        t0 = time.monotonic()
        subprocess.run(convert_cmd(model, out, workers), check=True)
        full = time.monotonic() - t0
        print(f"one full run: {full:.1f} s ({layers} layers, --workers {workers}, --tp_size 2)")
        rng = random.Random(seed)
        kills = []
        print(f"{'#':>3} {'kill at':>8} {'phase':<11} {'survivors':>9} {'output':<8} {'next run':<9} left  result")
        for i in range(n):
            k = kill_once(model, out, workers, rng.uniform(0, 1.2 * full), rerun_workers or workers)
            kills.append(k)
            print(
                f"{i + 1:>3} {k.at:>7.2f}s {k.phase:<11} {k.survivors:>9} {k.output:<8} {k.rerun:<9} "
                f"{len(k.left):>4}  {'PASS' if k.passed else 'FAIL ' + ' '.join(k.left)}",
                flush=True,
            )
        return kills


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="number of kills")
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rerun-workers", type=int, default=0, help="--workers of the next runs (default: --workers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where the model and outputs go (default: the system temp dir)")
    args = ap.parse_args()
    kills = run(args.n, args.layers, args.workers, args.seed, args.dir, args.rerun_workers)
    phases: dict[str, int] = {}
    for k in kills:
        phases[k.phase] = phases.get(k.phase, 0) + 1
    passed = sum(k.passed for k in kills)
    print(
        f"summary: {passed}/{len(kills)} passed; killed while "
        + ", ".join(f"{p} {c}" for p, c in sorted(phases.items()))
        + f"; survivors {sum(k.survivors for k in kills)}; invalid outputs {sum(k.output == 'INVALID' for k in kills)}"
        + f"; failed next runs {sum(k.rerun != 'ok' for k in kills)}; leftovers {sum(bool(k.left) for k in kills)}"
    )
    return 0 if passed == len(kills) else 1


if __name__ == "__main__":
    sys.exit(main())
