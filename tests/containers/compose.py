"""Drive the project's compose files (with the CPU override) against the test daemon."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

# Services whose images compose builds; convert-nemo uses convert-hf's image.
BUILT_SERVICES = ("convert-hf", "build", "eval")
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
BUILD_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 600


def _local_ca_certificates() -> str:
    """PEM text of the CAs this machine added locally (an intercepting egress proxy needs them)."""
    return "".join(cert.read_text() for cert in sorted(LOCAL_CA_DIR.glob("*.crt")))


class Compose:
    """`docker compose -f compose.yaml -f compose.cpu.yaml` for one test project, isolated from the caller's env."""

    def __init__(self, repo: Path, work: Path, docker_env: Mapping[str, str], project: str) -> None:
        self.repo = repo
        self.work = work
        self.project = project
        self.files = [repo / "compose.yaml", repo / "compose.cpu.yaml"]
        self.env_file = work / "empty.env"  # keeps a developer's .env out of the tests
        self.env_file.write_text("")
        self.base_env = {key: docker_env[key] for key in ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG")}
        self.base_env["CKPT_IMAGE_PREFIX"] = project

    def command(self, *args: str, extra_files: tuple[Path, ...] = ()) -> list[str]:
        files = [arg for file in (*self.files, *extra_files) for arg in ("-f", str(file))]
        return ["docker", "compose", "--project-name", self.project, "--env-file", str(self.env_file), *files, *args]

    def _run(self, argv: list[str], env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            env={**self.base_env, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run(
        self,
        service: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        entrypoint: str | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess:
        """`compose run --rm -T SERVICE [ARGS]`; returns the finished process (not checked)."""
        options = ["--entrypoint", entrypoint] if entrypoint else []
        options += ["--user", user] if user else []
        argv = self.command("run", "--rm", "-T", *options, service, *args)
        return self._run(argv, env or {}, RUN_TIMEOUT_S)

    def pipeline(self, source: str, env: Mapping[str, str]) -> subprocess.CompletedProcess:
        """`containers/pipeline.sh SOURCE` (convert, build, eval) with this project's compose options."""
        options = self.command()[2:]  # after `docker compose`
        argv = [str(self.repo / "containers/pipeline.sh"), source, *options]
        return self._run(argv, env, 3 * RUN_TIMEOUT_S)

    def config(self, env: Mapping[str, str] | None = None) -> str:
        """The resolved configuration as JSON text."""
        done = self._run(self.command("config", "--format", "json"), env or {}, 60)
        if done.returncode != 0:
            raise RuntimeError(f"compose config failed: {done.stderr.strip()}")
        return done.stdout

    def build(self, base_image: str, find_links: str, constraint: str) -> None:
        """Build the images from `base_image`, taking pip's find-links/constraints from a host-local server.

        The install stages are built and tagged first (`<image>-install`), so that after the build every
        untagged image is a leftover of an earlier build and can go: the kept store does not grow with each
        source change, and the tagged stages keep the dependency layers cached.
        """
        env = {
            "CONVERT_BASE_IMAGE": base_image,
            "BUILD_BASE_IMAGE": base_image,
            "EVAL_BASE_IMAGE": base_image,
            "CKPT_PIP_FIND_LINKS": find_links,
            "CKPT_PIP_CONSTRAINT": constraint,
            "CKPT_EXTRA_CA_CERTS": _local_ca_certificates(),
        }
        images = {name: service["image"] for name, service in json.loads(self.config())["services"].items()}
        for stage in ("install", "final"):
            override = self.work / f"build-{stage}.yaml"
            override.write_text(json.dumps({"services": {
                name: {"build": {"network": "host", "target": "install"}, "image": f"{images[name]}-install"}
                if stage == "install" else {"build": {"network": "host"}}
                for name in BUILT_SERVICES
            }}))  # fmt: skip
            self._build(stage, env, override)
        self._run(["docker", "image", "prune", "--force"], {}, 300)

    def _build(self, stage: str, env: Mapping[str, str], override: Path) -> None:
        done = self._run(self.command("build", *BUILT_SERVICES, extra_files=(override,)), env, BUILD_TIMEOUT_S)
        log = self.work / f"build-{stage}.log"
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            errors = [line for line in log.read_text().splitlines() if "error" in line.lower()]
            raise RuntimeError(f"compose build failed ({done.returncode}), log {log}:\n" + "\n".join(errors[-20:]))

    def down(self) -> None:
        """Remove the project's containers and named volumes, and containers failed build steps left behind.

        The images stay cached. Every container on the test daemon belongs to the tests.
        """
        self._run(self.command("down", "--volumes", "--remove-orphans"), {}, 120)
        self._run(["docker", "container", "prune", "--force"], {}, 120)
