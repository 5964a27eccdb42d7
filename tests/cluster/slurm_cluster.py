"""A private one-node Slurm for the cluster tests: munged, slurmctld and slurmd with every file in a work dir.

Debian's ``slurm-wlm`` and ``munge`` run without systemd: munged on its own key and socket, the daemons in the
foreground (``-D``) on free ports, clients pointed at the private ``slurm.conf`` by ``SLURM_CONF``. Accounting
is off (no slurmdbd): jobs are followed with ``scontrol`` and their own output files. Everything started here is
stopped by its PID when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")


def missing_tools() -> list[str]:
    from shutil import which

    return [name for name in DAEMONS if which(name) is None and not Path("/usr/sbin", name).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return str(Path("/usr/sbin", name)) if Path("/usr/sbin", name).exists() else name


@dataclass(frozen=True)
class SlurmCluster:
    """A running one-node Slurm and the environment its clients need."""

    conf: Path
    work: Path
    node: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(args, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def job_states(self, job_id: str) -> dict[str, str]:
        """``{job id (array tasks as ID_N): state}`` of the jobs slurmctld still knows (MinJobAge keeps them)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        states = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "ArrayTaskId" in fields and "ArrayJobId" in fields:
                states[f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"] = fields.get("JobState", "?")
            elif "JobId" in fields:
                states[fields["JobId"]] = fields.get("JobState", "?")
        return states

    def wait_idle(self, timeout: float) -> None:
        """Until no job is pending or running (or ``timeout`` s passed: RuntimeError)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i").strip():
                return
            time.sleep(1)
        queue = self.run("squeue", "-o", "%i %j %T %r", check=False)
        raise RuntimeError(f"jobs still queued after {timeout:.0f} s:\n{queue}")


def _conf(work: Path, node: str, munge_socket: Path) -> str:
    cpus = os.cpu_count() or 1
    mem = max(1024, (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2**20 - 1024)
    return "\n".join(
        [
            "ClusterName=ckpttest",
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=600",
            "SchedulerType=sched/backfill",
            f"StateSaveLocation={work}/state",
            f"SlurmdSpoolDir={work}/spool",
            f"SlurmctldPidFile={work}/slurmctld.pid",
            f"SlurmdPidFile={work}/slurmd.pid",
            f"SlurmctldLogFile={work}/slurmctld.log",
            f"SlurmdLogFile={work}/slurmd.log",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
            "",
        ]
    )


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def _start(stack: contextlib.ExitStack, command: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(_stop, proc)
    return proc


def _wait_for(what: str, ready, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            tails = "\n".join(f"{log}:\n{log.read_text()[-1500:]}" for log in logs if log.exists())
            raise RuntimeError(f"{dead[0].args[0]} exited with {dead[0].returncode} before {what}:\n{tails}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {START_TIMEOUT_S:.0f} s; logs in {logs[0].parent}")


@contextlib.contextmanager
def running_slurm(work: Path) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd on this machine, configured and logging under ``work``; stopped at exit."""
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (work / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    key = work / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = work / "munge" / "munge.sock"
    conf = work / "slurm.conf"
    conf.write_text(_conf(work, node, munge_socket))
    cluster = SlurmCluster(conf=conf, work=work, node=node)
    env_conf = ["-f", str(conf)]
    with contextlib.ExitStack() as stack:
        munge = [
            _exe("munged"), "--foreground", "--force",
            f"--key-file={key}", f"--socket={munge_socket}",
            f"--pid-file={work}/munge/munged.pid", f"--seed-file={work}/munge/munged.seed",
            f"--log-file={work}/munge/munged.log",
        ]  # fmt: skip
        procs = [_start(stack, munge, work / "munged.out")]
        _wait_for("munged's socket", munge_socket.exists, procs, [work / "munge" / "munged.log"])
        logs = [work / "slurmctld.log", work / "slurmd.log"]
        procs.append(_start(stack, [_exe("slurmctld"), "-D", "-i", *env_conf], work / "slurmctld.out"))
        procs.append(_start(stack, [_exe("slurmd"), "-D", "-N", node, *env_conf], work / "slurmd.out"))

        def node_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()
            return out.startswith("idle")

        _wait_for("the node idle in sinfo", node_idle, procs, logs)
        yield cluster
        subprocess.run(["scancel", "--full", "-u", "root"], env=cluster.env, capture_output=True)
