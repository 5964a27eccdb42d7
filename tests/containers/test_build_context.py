"""The build context `.dockerignore` lets through, and the user-creation script, on the real daemon."""

from __future__ import annotations

import pytest

from .conftest import REPO
from .docker_daemon import DockerDaemon

pytestmark = [pytest.mark.docker]

LIST_CONTEXT = "FROM {base}\nCOPY . /context\nRUN cd /context && find . -mindepth 1 | sort\n"


@pytest.fixture(scope="module")
def context_paths(docker_daemon: DockerDaemon, base_image: str, tmp_path_factory) -> list[str]:
    image_id = tmp_path_factory.mktemp("context") / "image-id"
    done = docker_daemon.docker(
        "build", "--no-cache", "--force-rm", "--iidfile", str(image_id), "-f", "-", str(REPO),
        input=LIST_CONTEXT.format(base=base_image), check=False,
    )  # fmt: skip
    if image_id.exists():
        docker_daemon.docker("image", "rm", image_id.read_text().strip(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line[2:] for line in done.stdout.splitlines() if line.startswith("./")]


def test_context_holds_only_sources_and_install_scripts(context_paths: list[str]) -> None:
    tops = {path.split("/")[0] for path in context_paths}
    assert tops == {"containers", "shared", "tools"}
    assert {p for p in context_paths if p.startswith("containers/")} == {
        f"containers/{script.name}" for script in (REPO / "containers").glob("*.sh")
    }
    for tool in ("convert", "build", "eval"):
        assert f"tools/{tool}/pyproject.toml" in context_paths


@pytest.mark.parametrize("part", ["__pycache__", ".egg-info", ".pyc", "/tests/", ".venv", ".git"])
def test_context_has_no_caches_or_development_files(context_paths: list[str], part: str) -> None:
    assert not [path for path in context_paths if part in f"/{path}/"]


TAKE_OVER_UID = """FROM {base}
RUN groupadd --gid 1000 ubuntu && useradd --uid 1000 --gid 1000 --create-home ubuntu && touch /home/ubuntu/kept
COPY containers/create-user.sh /tmp/
RUN ! sh /tmp/create-user.sh 0 0
RUN sh /tmp/create-user.sh 1000 1000
RUN test "$(id -u ckpt):$(id -g ckpt)" = 1000:1000 && ! id ubuntu && test -f /home/ckpt/kept \\
    && test "$(stat -c %u:%g /data)" = 1000:1000
"""


def test_create_user_takes_over_ubuntus_uid_1000_account(docker_daemon: DockerDaemon, base_image: str) -> None:
    """NVIDIA's Ubuntu 24.04 images already have `ubuntu` as UID 1000: it becomes `ckpt`; UID 0 is refused."""
    done = docker_daemon.docker(
        "build", "--no-cache", "--force-rm", "-q", "-f", "-", str(REPO),
        input=TAKE_OVER_UID.format(base=base_image), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    docker_daemon.docker("image", "rm", done.stdout.strip(), check=False)
