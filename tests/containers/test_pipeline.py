"""End to end, for real: a private dockerd, images built on a local Debian base, the compose pipeline on the CPU.

docs/containers.md's tested blocks run verbatim: the images are built by the first (conftest), and the second
takes a tiny random LLaMA with 256 positions through convert-hf -> build (TensorRT-RTX, limits derived from the
checkpoint) -> eval (torch backend, the shipped data set) on a host directory as the volume. Then: the files are
readable by the host user and other users, a volume the containers cannot write fails with the one-line hint,
the NeMo, DeepSpeed and JAX fixtures through `containers/pipeline.sh nemo` / `deepspeed` / `jax`, the failure and
isolation guarantees and the default named volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptfmt.constants import ENGINE_FILE, RANK_FILE
from tests.tiny_models import make_tiny_hf

from .compose import Compose, documented_block
from .conftest import DOC, REPO, cache_dir
from .docker_daemon import DockerDaemon
from .tiny_tokenizer import save_tiny_tokenizer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CONTAINER_UID = 1000  # CKPT_UID of the images
DATASET = REPO / "tools/eval/ckpt_eval/data/cnn_dailymail_mini.jsonl"
NEMO_FIXTURE = REPO / "tests/fixtures/nemo/llama_tp2.nemo"  # NeMo 1 archive, source TP 2
DEEPSPEED_FIXTURE = REPO / "tests/fixtures/deepspeed/zero3_fp32_dp2"  # ZeRO 3 at 2 ranks, written by DeepSpeed
DEEPSPEED_LIMITS = {"MAX_INPUT_LEN": "40", "MAX_OUTPUT_LEN": "8"}  # its model has 64 positions
JAX_FIXTURE = REPO / "tests/convert/jax/llama"  # tiny LLaMA (vocab 96, 64 positions) as orbax/flax wrote it
SETTINGS = {  # small limits: a tiny model, a 2-core CI machine
    "MODEL_NAME": "tiny",
    "MAX_BATCH_SIZE": "1",
    "MAX_INPUT_LEN": "96",
    "MAX_OUTPUT_LEN": "16",  # 96 + 16 within the tiny models' 128 positions
    "MAX_ITE": "2",
    "OUTPUT_LEN": "8",
    "ROUGE1_THRESHOLD": "0",  # a random model summarizes badly; the gate itself still runs
}
TINY_POSITIONS = 256  # the documented flow's model: build limits derived from it, not compose defaults
# The documented flow sets no build limits; eval's prompts are shortened through its documented EVAL_ARGS.
DOCUMENTED_SETTINGS = {
    **{key: value for key, value in SETTINGS.items() if not key.startswith("MAX_") or key == "MAX_ITE"},
    "EVAL_ARGS": "--max_input_length 96",
}
OTHER_USER = 65534  # neither root nor the containers' user: stands for the host user and other services


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
    make_tiny_hf("llama-gqa", path, max_position_embeddings=TINY_POSITIONS)
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
def workspace() -> Iterator[dict[str, Path]]:
    """Under a world-traversable temp dir (pytest's are 0700), so that other users can reach the volume."""
    root = Path(tempfile.mkdtemp(prefix="ckpt-suite-pipeline-"))
    root.chmod(0o755)
    yield {"hf": _tiny_hf_model(root / "hf-model"), "volume": _shared_dir(root / "volume"), "root": root}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def env(workspace: dict[str, Path]) -> dict[str, str]:
    return {**SETTINGS, "HF_MODEL_DIR": str(workspace["hf"]), "CKPT_VOLUME": str(workspace["volume"])}


@pytest.fixture(scope="module")
def source_before(workspace: dict[str, Path]) -> dict:
    return _snapshot(workspace["hf"])


@pytest.fixture(scope="module")
def documented_run(compose: Compose, workspace: dict, source_before: dict) -> subprocess.CompletedProcess:
    """docs/containers.md's `cpu-pipeline` block, verbatim: convert-hf, build and eval with their defaults."""
    env = {**DOCUMENTED_SETTINGS, "HF_MODEL_DIR": str(workspace["hf"]), "CKPT_VOLUME": str(workspace["volume"])}
    start = time.monotonic()
    done = _ok(compose.shell(documented_block(DOC, "cpu-pipeline"), env, timeout=1800))
    figures = cache_dir() / "last-build-figures.json"
    if figures.is_file():
        recorded = json.loads(figures.read_text())
        recorded["seconds"]["documented pipeline (convert, build, eval)"] = round(time.monotonic() - start, 1)
        figures.write_text(json.dumps(recorded, indent=1) + "\n")
    return done


def test_documented_flow_writes_a_valid_checkpoint(documented_run, workspace: dict) -> None:
    from ckptfmt import validate_checkpoint

    checkpoint = workspace["volume"] / "checkpoints/tiny"
    assert (checkpoint / "config.json").is_file() and (checkpoint / RANK_FILE.format(rank=0)).is_file()
    validate_checkpoint(checkpoint)


def test_documented_build_derives_its_limits_from_the_checkpoint(documented_run, workspace: dict) -> None:
    """No MAX_* settings: max_seq_len is the model's 256 positions (not 1024 + 256), and the build says so."""
    engines = workspace["volume"] / "engines/tiny"
    plan = engines / ENGINE_FILE.format(rank=0)
    assert plan.is_file() and plan.stat().st_size > 10_000
    build = json.loads((engines / "config.json").read_text())["build_config"]
    assert (build["max_input_len"], build["max_seq_len"]) == (TINY_POSITIONS // 2, TINY_POSITIONS)
    assert f"max_input_len {TINY_POSITIONS // 2}, max_seq_len {TINY_POSITIONS}" in documented_run.stdout


def test_documented_eval_writes_a_report(documented_run, workspace: dict) -> None:
    """The gate the eval image runs by default: the summarize task's report, its JUnit file and the summary."""
    report = workspace["volume"] / "reports/tiny"
    assert (report / "summarize/results.json").is_file()
    assert 'failures="0"' in (report / "junit-summarize.xml").read_text()
    assert "summarize" in (report / "summary.md").read_text()


def test_outputs_are_readable_by_the_host_user(documented_run, workspace: dict) -> None:
    """Every directory and file the services wrote: 0755/0644, and read for real as another host UID."""
    volume = workspace["volume"]
    written = [volume / part for part in ("checkpoints/tiny", "engines/tiny", "reports/tiny")]
    for path in [p for top in written for p in (top, *top.rglob("*"))]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: mode {mode:o}"
    read = subprocess.run(
        ["sh", "-c", 'find "$@" -type f -exec cat {} + | wc -c', "find", *map(str, written)],
        user=OTHER_USER, group=OTHER_USER, extra_groups=[], capture_output=True, text=True,
    )  # fmt: skip
    assert read.returncode == 0 and read.stderr == "", read.stderr
    total = sum(path.stat().st_size for top in written for path in top.rglob("*") if path.is_file())
    assert int(read.stdout) == total


def test_outputs_are_readable_by_a_service_run_as_another_user(compose: Compose, env: dict, documented_run) -> None:
    """The next service reads what the previous one wrote even when run with another --user."""
    probe = "find /data/checkpoints/tiny /data/engines/tiny -type f -exec cat {} + | wc -c"
    done = _ok(compose.run("eval", "-c", probe, env=env, entrypoint="sh", user=f"{OTHER_USER}:{OTHER_USER}"))
    assert int(done.stdout) > 0 and done.stderr.count("Permission denied") == 0


def test_unwritable_volume_fails_with_a_one_line_hint(compose: Compose, workspace: dict) -> None:
    """A host directory owned by root (0755) as the volume: the entrypoint names owner and fix, exit 1."""
    volume = workspace["root"] / "root-owned-volume"
    volume.mkdir(mode=0o755)
    env = {**SETTINGS, "HF_MODEL_DIR": str(workspace["hf"]), "CKPT_VOLUME": str(volume)}
    done = compose.run("convert-hf", env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("ckpt-convert:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "/data is owned by 0:0" in errors[0] and f"user {CONTAINER_UID}:{CONTAINER_UID}" in errors[0]
    assert f"chown {CONTAINER_UID}:{CONTAINER_UID}" in errors[0] and "CKPT_UID" in errors[0]
    assert list(volume.iterdir()) == []


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


ENTRYPOINTS = {"convert": "ckpt-convert", "build": "ckpt-build", "eval": "ckpt-eval"}
LEFTOVERS_PROBE = "ls -d /tmp/ckpt-src /opt/ckpt/bin/pip* /root/.cache/pip /tmp/*.pem 2>/dev/null || true"
TORCH_PROBE = """python - <<'EOF'
import importlib.metadata as md, torch
print(torch.__version__, torch.version.cuda, sorted(d.metadata["Name"] for d in md.distributions()
      if d.metadata["Name"].lower().startswith(("nvidia", "triton"))))
EOF"""


@pytest.mark.parametrize("service", ["convert-hf", "build", "eval"])
def test_images_carry_no_build_inputs(compose: Compose, docker_daemon: DockerDaemon, env: dict, service: str) -> None:
    """Non-root image, `ckpt-entry <tool>` entrypoint; no sources, pip or pip caches; no build settings in history."""
    image = compose.image(service)
    config = json.loads(docker_daemon.docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
    assert config["Entrypoint"] == ["ckpt-entry", ENTRYPOINTS[image.split("/")[-1].split(":")[0]]]
    history = docker_daemon.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    build_inputs = (compose.env["CKPT_PIP_TRUSTED_HOST"], "CERTIFICATE", "PIP_", "TORCH_INDEX_URL")
    assert not [word for word in build_inputs if word in history]
    leftovers = _ok(compose.run(service, "-c", LEFTOVERS_PROBE, env=env, entrypoint="sh", user="0"))
    assert leftovers.stdout.split() == []


@pytest.mark.parametrize("service", ["convert-hf", "eval"])
def test_torch_images_carry_the_cpu_build(compose: Compose, env: dict, service: str) -> None:
    """torch from TORCH_INDEX_URL: the CPU build, no nvidia-* or triton distributions from PyPI's CUDA torch."""
    done = _ok(compose.run(service, "-c", TORCH_PROBE, env=env, entrypoint="sh"))
    assert done.stdout.split() == ["2.13.0+cpu", "None", "[]"]


def test_builder_image_has_no_torch(compose: Compose, env: dict) -> None:
    """TORCH_INDEX_URL reaches every build, but only images whose tool requires torch install it."""
    done = compose.run("build", "-c", "python -c 'import torch'", env=env, entrypoint="sh")
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr


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
    assert (volume / "reports/nemo/summarize/results.json").is_file()


def test_deepspeed_pipeline_converts_builds_and_evaluates(compose: Compose, workspace: dict) -> None:
    """`pipeline.sh deepspeed`: a ZeRO-3 checkpoint DeepSpeed wrote, its HF config folder with a tokenizer."""
    from ckptfmt import validate_checkpoint

    config_dir = workspace["root"] / "deepspeed-config"
    config_dir.mkdir()
    shutil.copy(DEEPSPEED_FIXTURE / "hf" / "config.json", config_dir / "config.json")
    save_tiny_tokenizer(config_dir, DATASET, vocab_size=96)  # the fixture model's vocabulary
    for path in [config_dir, *config_dir.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    volume = workspace["volume"]
    env = {
        **SETTINGS,
        **DEEPSPEED_LIMITS,
        "MODEL_NAME": "deepspeed",
        "DEEPSPEED_CHECKPOINT_DIR": str(DEEPSPEED_FIXTURE / "ckpt"),
        "DEEPSPEED_MODEL_CONFIG_DIR": str(config_dir),
        "CKPT_VOLUME": str(volume),
    }
    _ok(compose.pipeline("deepspeed", env))
    validate_checkpoint(volume / "checkpoints/deepspeed")
    assert (volume / "checkpoints/deepspeed/tokenizer/tokenizer.json").is_file()
    assert (volume / "engines/deepspeed" / ENGINE_FILE.format(rank=0)).is_file()
    assert (volume / "reports/deepspeed/summarize/results.json").is_file()


def test_jax_pipeline_converts_builds_and_evaluates(compose: Compose, workspace: dict) -> None:
    """`pipeline.sh jax`: an orbax CheckpointManager folder (step 1 of 2 chosen by JAX_STEP), its HF config folder
    with a tokenizer."""
    from ckptfmt import validate_checkpoint

    config_dir = workspace["root"] / "jax-config"
    config_dir.mkdir()
    shutil.copy(JAX_FIXTURE / "hf" / "config.json", config_dir / "config.json")
    save_tiny_tokenizer(config_dir, DATASET, vocab_size=96)  # the fixture model's vocabulary
    for path in [config_dir, *config_dir.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    volume = workspace["volume"]
    env = {
        **SETTINGS,
        **DEEPSPEED_LIMITS,  # the same 64 positions
        "MODEL_NAME": "jax",
        "JAX_CHECKPOINT_DIR": str(JAX_FIXTURE / "manager"),
        "JAX_MODEL_CONFIG_DIR": str(config_dir),
        "JAX_STEP": "1",
        "CKPT_VOLUME": str(volume),
    }
    _ok(compose.pipeline("jax", env))
    validate_checkpoint(volume / "checkpoints/jax")
    assert (volume / "checkpoints/jax/tokenizer/tokenizer.json").is_file()
    assert (volume / "engines/jax" / ENGINE_FILE.format(rank=0)).is_file()
    assert (volume / "reports/jax/summarize/results.json").is_file()


def test_read_only_source_is_unchanged(workspace: dict, source_before: dict) -> None:
    assert _snapshot(workspace["hf"]) == source_before
