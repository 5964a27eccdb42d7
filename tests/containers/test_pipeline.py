"""End to end, for real: a private dockerd, images built on a local Debian base, the compose pipeline on the CPU.

convert-hf (tiny random LLaMA) -> build (TensorRT-RTX) -> eval (torch backend, the shipped data set) on a host
directory as the volume; the NeMo fixture through `containers/pipeline.sh nemo`; then the failure and isolation
guarantees and the default named volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptfmt.constants import ENGINE_FILE, RANK_FILE
from tests.tiny_models import make_tiny_hf

from .compose import Compose
from .conftest import REPO
from .docker_daemon import DockerDaemon
from .tiny_tokenizer import save_tiny_tokenizer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CONTAINER_UID = 1000  # CKPT_UID of the images
DATASET = REPO / "tools/eval/ckpt_eval/data/cnn_dailymail_mini.jsonl"
NEMO_FIXTURE = REPO / "tests/fixtures/nemo/llama_tp2.nemo"  # NeMo 1 archive, source TP 2
SETTINGS = {  # small limits: a tiny model, a 2-core CI machine
    "MODEL_NAME": "tiny",
    "MAX_BATCH_SIZE": "1",
    "MAX_INPUT_LEN": "96",  # + OUTPUT_LEN within the tiny models' 128 positions
    "MAX_OUTPUT_LEN": "16",
    "MAX_ITE": "2",
    "OUTPUT_LEN": "8",
    "ROUGE1_THRESHOLD": "0",  # a random model summarizes badly; the gate itself still runs
}


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under root: (mode, mtime_ns, sha256 of a file's bytes)."""
    entries = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        entries[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, digest)
    return entries


def _shared_dir(path: Path) -> Path:
    """A host directory the containers' user owns, used as the shared volume."""
    path.mkdir()
    if os.geteuid() == 0:
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
    else:
        path.chmod(0o777)
    return path


def _tiny_hf_model(path: Path) -> Path:
    make_tiny_hf("llama-gqa", path)
    save_tiny_tokenizer(path, DATASET, vocab_size=250)
    path.chmod(0o755)  # private temp dirs and 0600 safetensors: make the source readable by the containers' user
    for file in path.iterdir():
        file.chmod(0o644)
    return path


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    return {"hf": _tiny_hf_model(root / "hf-model"), "volume": _shared_dir(root / "volume"), "root": root}


@pytest.fixture(scope="module")
def env(workspace: dict[str, Path]) -> dict[str, str]:
    return {**SETTINGS, "HF_MODEL_DIR": str(workspace["hf"]), "CKPT_VOLUME": str(workspace["volume"])}


@pytest.fixture(scope="module")
def source_before(workspace: dict[str, Path]) -> dict:
    return _snapshot(workspace["hf"])


def test_convert_hf_writes_a_valid_checkpoint(compose: Compose, env: dict, workspace: dict, source_before) -> None:
    from ckptfmt import validate_checkpoint

    _ok(compose.run("convert-hf", env=env))
    checkpoint = workspace["volume"] / "checkpoints/tiny"
    assert (checkpoint / "config.json").is_file() and (checkpoint / RANK_FILE.format(rank=0)).is_file()
    validate_checkpoint(checkpoint)


def test_build_writes_an_engine(compose: Compose, env: dict, workspace: dict) -> None:
    _ok(compose.run("build", env=env))
    engines = workspace["volume"] / "engines/tiny"
    assert (engines / "config.json").is_file()
    plan = engines / ENGINE_FILE.format(rank=0)
    assert plan.is_file() and plan.stat().st_size > 10_000


def test_eval_writes_a_report(compose: Compose, env: dict, workspace: dict) -> None:
    _ok(compose.run("eval", env=env))
    report = workspace["volume"] / "reports/tiny"
    assert (report / "results.json").is_file()


def test_failing_convert_stops_the_pipeline_with_its_exit_code(compose: Compose, workspace: dict) -> None:
    broken = workspace["root"] / "broken-model"
    broken.mkdir(mode=0o755)
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": ')
    broken.joinpath("config.json").chmod(0o644)
    expected = subprocess.run(
        [sys.executable, "-c", "import sys; from ckpt_convert.cli import main; sys.exit(main(sys.argv[1:]))",
         "hf", "--model_dir", str(broken), "--output_dir", str(workspace["root"] / "host-out"),
         "--dtype", "float32"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert expected.returncode != 0
    volume = _shared_dir(workspace["root"] / "failing-volume")
    done = compose.pipeline("hf", env={**SETTINGS, "HF_MODEL_DIR": str(broken), "CKPT_VOLUME": str(volume)})
    assert done.returncode == expected.returncode, done.stderr[-3000:]
    assert "docker compose run build" not in done.stderr
    assert not (volume / "engines").exists() and not (volume / "checkpoints/tiny").exists()


def test_default_named_volume_is_writable_and_shared(compose: Compose, workspace: dict) -> None:
    """Without CKPT_VOLUME: a fresh named volume, owned by the images' user, seen by every service."""
    env = {**SETTINGS, "MODEL_NAME": "named", "HF_MODEL_DIR": str(workspace["hf"])}
    _ok(compose.run("convert-hf", env=env))
    listing = _ok(compose.run("eval", "-c", "ls /data/checkpoints/named", env=env, entrypoint="sh"))
    assert {"config.json", RANK_FILE.format(rank=0)} <= set(listing.stdout.split())


def test_compose_run_returns_the_container_exit_code(compose: Compose, env: dict) -> None:
    assert compose.run("build", "-c", "exit 7", env=env, entrypoint="sh").returncode == 7


ENTRYPOINTS = {"convert": ["ckpt-convert"], "build": ["ckpt-build"], "eval": ["ckpt-summarize"]}
LEFTOVERS_PROBE = "ls -d /tmp/ckpt-src /opt/ckpt/bin/pip* /root/.cache/pip /tmp/*.pem 2>/dev/null || true"


@pytest.mark.parametrize("service", ["convert-hf", "build", "eval"])
def test_images_carry_no_build_inputs(compose: Compose, docker_daemon: DockerDaemon, env: dict, service: str) -> None:
    """Non-root entrypoint image; no sources, pip caches or pip in the venv; no pip settings in the history."""
    image = json.loads(compose.config())["services"][service]["image"]
    config = json.loads(docker_daemon.docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
    assert config["Entrypoint"] == ENTRYPOINTS[image.split("/")[-1].split(":")[0]]
    history = docker_daemon.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert not [word for word in ("127.0.0.1", "CERTIFICATE", "PIP_") if word in history]
    leftovers = _ok(compose.run(service, "-c", LEFTOVERS_PROBE, env=env, entrypoint="sh", user="0"))
    assert leftovers.stdout.split() == []


# Lists what the user may write: everything except /proc, /sys and /dev (device nodes and IPC shm by design).
WRITABLE_PROBE = """
set -e
test "$(id -u)" != 0
find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -writable -print 2>/dev/null | sort
if touch /src/model/probe 2>/dev/null; then echo SOURCE-WRITABLE; fi
"""


@pytest.mark.parametrize("service", ["convert-hf", "build", "eval"])
def test_container_user_writes_only_the_shared_volume(compose: Compose, env: dict, service: str) -> None:
    done = _ok(compose.run(service, "-c", WRITABLE_PROBE, env=env, entrypoint="sh"))
    writable = done.stdout.split()
    outside = [path for path in writable if not path.startswith(("/data", "/tmp"))]
    assert not outside, f"{service} can write outside /data and /tmp: {outside[:20]}"
    assert "/data" in writable and "SOURCE-WRITABLE" not in writable


def test_nemo_pipeline_converts_builds_and_evaluates(compose: Compose, workspace: dict) -> None:
    """`pipeline.sh nemo` with the defaults: the tokenizer travels inside the checkpoint to eval."""
    from ckptfmt import validate_checkpoint

    volume = workspace["volume"]
    env = {**SETTINGS, "MODEL_NAME": "nemo", "NEMO_CKPT_PATH": str(NEMO_FIXTURE), "CKPT_VOLUME": str(volume)}
    _ok(compose.pipeline("nemo", env))
    validate_checkpoint(volume / "checkpoints/nemo")
    assert (volume / "engines/nemo" / ENGINE_FILE.format(rank=0)).is_file()
    assert (volume / "reports/nemo/results.json").is_file()


def test_read_only_source_is_unchanged(workspace: dict, source_before: dict) -> None:
    assert _snapshot(workspace["hf"]) == source_before
