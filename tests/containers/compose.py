"""Drive the project's compose files against the test daemon the way docs/containers.md tells a user to.

Every command runs in the repository root with `COMPOSE_FILE=compose.yaml:compose.cpu.yaml` and the settings
docs/containers.md lists (base images, TORCH_INDEX_URL, CKPT_PIP_TRUSTED_HOST, CKPT_EXTRA_CA_CERTS), isolated
from the caller's environment and from a developer's `.env`.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

# Services whose images compose builds; convert-nemo uses convert-hf's image.
BUILT_SERVICES = ("convert-hf", "build", "eval")
CPU_FILES = "compose.yaml:compose.cpu.yaml"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
BUILD_TIMEOUT_S = 1500
RUN_TIMEOUT_S = 600
TESTED_BLOCK = re.compile(r"<!-- tested: (?P<name>[\w-]+) -->\n```sh\n(?P<body>.*?)```", re.DOTALL)


def local_ca_certificates() -> str:
    """PEM text of the CAs this machine added locally (an intercepting egress proxy needs them)."""
    return "".join(cert.read_text() for cert in sorted(LOCAL_CA_DIR.glob("*.crt")))


def documented_block(doc: Path, name: str) -> str:
    """The shell block marked `<!-- tested: NAME -->` in `doc`, verbatim."""
    blocks = {match["name"]: match["body"] for match in TESTED_BLOCK.finditer(doc.read_text())}
    if name not in blocks:
        raise LookupError(f"{doc}: no block marked '<!-- tested: {name} -->' (found {sorted(blocks)})")
    return blocks[name]


class Compose:
    """`docker compose` with the CPU override for one test project."""

    def __init__(self, repo: Path, work: Path, docker_env: Mapping[str, str], project: str) -> None:
        self.repo = repo
        self.work = work
        empty_env_file = work / "empty.env"  # keeps a developer's .env out of the tests
        empty_env_file.write_text("")
        self.env = {key: docker_env[key] for key in ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG")}
        self.env.update(
            COMPOSE_FILE=CPU_FILES,
            COMPOSE_PROJECT_NAME=project,
            COMPOSE_ENV_FILES=str(empty_env_file),
            CKPT_IMAGE_PREFIX=project,
        )

    def configure_builds(self, base_image: str, torch_index_url: str, trusted_host: str) -> None:
        """The documented build settings: a local base image, torch from a plain-HTTP index on this machine's
        loopback (builds on the host network), local CAs."""
        self.env.update(
            CONVERT_BASE_IMAGE=base_image,
            BUILD_BASE_IMAGE=base_image,
            EVAL_BASE_IMAGE=base_image,
            TORCH_INDEX_URL=torch_index_url,
            CKPT_PIP_TRUSTED_HOST=trusted_host,
            CKPT_BUILD_NETWORK="host",
            CKPT_EXTRA_CA_CERTS=local_ca_certificates(),
        )

    def _run(self, argv: list[str], env: Mapping[str, str | None], timeout: float) -> subprocess.CompletedProcess:
        """Run in the repository root; `env` adds settings (None: unset)."""
        merged = {key: value for key, value in {**self.env, **env}.items() if value is not None}
        return subprocess.run(
            argv,
            cwd=self.repo,
            env=merged,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def shell(self, script: str, env: Mapping[str, str | None], timeout: float) -> subprocess.CompletedProcess:
        """Run shell commands (a documented block) in the repository root, stopping at the first failure."""
        return self._run(["bash", "-e", "-x", "-c", script], env, timeout)

    def run(
        self,
        service: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        entrypoint: str | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess:
        """`docker compose run --rm -T SERVICE [ARGS]`; returns the finished process (not checked)."""
        options = ["--entrypoint", entrypoint] if entrypoint else []
        options += ["--user", user] if user else []
        return self._run(["docker", "compose", "run", "--rm", "-T", *options, service, *args], env or {}, RUN_TIMEOUT_S)

    def pipeline(self, source: str, env: Mapping[str, str]) -> subprocess.CompletedProcess:
        """`containers/pipeline.sh SOURCE` (convert, build, eval)."""
        return self._run(["containers/pipeline.sh", source], env, 3 * RUN_TIMEOUT_S)

    def config(self, env: Mapping[str, str] | None = None) -> dict:
        """The resolved configuration."""
        done = self._run(["docker", "compose", "config", "--format", "json"], env or {}, 60)
        if done.returncode != 0:
            raise RuntimeError(f"compose config failed: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def image(self, service: str) -> str:
        return self.config()["services"][service]["image"]

    def warm_install_stages(self) -> None:
        """Build and tag each image's install stage (`<image>-install`) before the documented build.

        The documented `docker compose build` then finds those layers cached, and every untagged image left
        afterwards is an earlier build's (see `prune`): the kept store does not grow with source changes.
        """
        files = [arg for name in CPU_FILES.split(":") for arg in ("-f", name)]
        override = self.work / "install-stages.yaml"
        override.write_text(json.dumps({"services": {
            name: {"build": {"target": "install"}, "image": f"{self.image(name)}-install"} for name in BUILT_SERVICES
        }}))  # fmt: skip
        argv = ["docker", "compose", *files, "-f", str(override), "build", *BUILT_SERVICES]
        self.check_build(self._run(argv, {}, BUILD_TIMEOUT_S), "install-stages")

    def check_build(self, done: subprocess.CompletedProcess, name: str) -> None:
        log = self.work / f"{name}.log"
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            errors = [line for line in log.read_text().splitlines() if "error" in line.lower()]
            raise RuntimeError(f"{name} failed ({done.returncode}), log {log}:\n" + "\n".join(errors[-20:]))

    def prune(self) -> None:
        """Remove dangling images: earlier builds' leftovers (this build's stages are tagged or in use)."""
        self._run(["docker", "image", "prune", "--force"], {}, 300)

    def down(self) -> None:
        """Remove the project's containers and named volumes, and containers failed build steps left behind.

        The images stay cached. Every container on the test daemon belongs to the tests.
        """
        self._run(["docker", "compose", "down", "--volumes", "--remove-orphans"], {}, 120)
        self._run(["docker", "container", "prune", "--force"], {}, 120)
