"""The README's set-up resolves from the public registry alone, with the pins in constraints.txt.

Our machines also see a local folder of wheels (a CPU torch among them); a fresh machine does not. This asks
pip, isolated from every local setting, to resolve exactly what scripts/setup.sh installs against PyPI alone.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _setup_requirements() -> list[str]:
    """What scripts/setup.sh installs: the four distributions with all their extras, and the dev tools."""
    reqs = ["torch==2.13.0", "-e", f"{ROOT / 'shared'}[test]"]
    for tool in ("convert", "build", "eval"):
        extras = tomllib.loads((ROOT / "tools" / tool / "pyproject.toml").read_text())["project"]
        reqs += ["-e", f"{ROOT / 'tools' / tool}[{','.join(extras.get('optional-dependencies', {}))}]"]
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    return reqs + list(root)


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
def test_setup_resolves_from_the_public_registry_alone(tmp_path):
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--isolated", "--ignore-installed", "--quiet"]
    cmd += ["--index-url", "https://pypi.org/simple", "--report", str(tmp_path / "report.json")]
    cmd += ["-c", str(ROOT / "constraints.txt")]
    if CA_BUNDLE.is_file():
        cmd += ["--cert", str(CA_BUNDLE)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    p = subprocess.run(cmd + _setup_requirements(), capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    versions = {_normalized(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    assert versions["torch"] == "2.13.0" and versions["tensorrt-rtx-cu13-bindings"] == "1.7.1.116"
