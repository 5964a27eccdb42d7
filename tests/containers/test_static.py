"""Static checks of the Dockerfiles and compose files: no Docker daemon needed, a few seconds in all."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import tomllib

from .conftest import REPO, dev_tool

DOCKERFILES = sorted((REPO / "containers").glob("*.Dockerfile"))
SCRIPTS = sorted((REPO / "containers").glob("*.sh"))
COMPOSE = REPO / "compose.yaml"
COMPOSE_CPU = REPO / "compose.cpu.yaml"
# Dockerfile -> (tool folder, CLI that is the entrypoint, NVIDIA image family of the default base)
TOOLS = {
    "convert.Dockerfile": ("convert", "ckpt-convert", "nvcr.io/nvidia/pytorch:"),
    "build.Dockerfile": ("build", "ckpt-build", "nvcr.io/nvidia/tensorrt:"),
    "eval.Dockerfile": ("eval", "ckpt-eval", "nvcr.io/nvidia/pytorch:"),
}
SERVICE_DOCKERFILE = {
    "convert-hf": "convert.Dockerfile",
    "convert-nemo": "convert.Dockerfile",
    "convert-deepspeed": "convert.Dockerfile",
    "convert-jax": "convert.Dockerfile",
    "build": "build.Dockerfile",
    "eval": "eval.Dockerfile",
}


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def _resolved(*files: Path, env: dict[str, str] | None = None) -> dict:
    argv = [dev_tool("docker-compose")]
    for file in files:
        argv += ["-f", str(file)]
    done = _run(*argv, "config", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _clean_env(**settings: str) -> dict[str, str]:
    """No CKPT_* or other compose variables from the caller: defaults are what is checked."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **settings}


def test_every_tool_has_a_dockerfile() -> None:
    assert sorted(path.name for path in DOCKERFILES) == sorted(TOOLS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint(dockerfile: Path) -> None:
    done = _run(dev_tool("hadolint"), str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_shellcheck(script: Path) -> None:
    done = _run(dev_tool("shellcheck"), "--shell=sh", str(script))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_CPU)], ids=["gpu", "cpu"])
def test_compose_config_is_valid(files: tuple[Path, ...]) -> None:
    argv = [dev_tool("docker-compose")]
    for file in files:
        argv += ["-f", str(file)]
    done = _run(*argv, "config", "-q", env=_clean_env())
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_CPU)], ids=["gpu", "cpu"])
def test_compose_spec_schema(files: tuple[Path, ...], tmp_path: Path) -> None:
    """compose.yaml as written, and each merged configuration (the override's `!reset` tag is Compose-only)."""
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps(_resolved(*files, env=_clean_env())))
    checked = [str(merged)] + ([str(COMPOSE)] if files == (COMPOSE,) else [])
    done = _run(dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *checked)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_rejects_an_unknown_key(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  convert-hf:\n    image: x\n    gpus_reserved: 1\n")
    done = _run(dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert done.returncode != 0 and "gpus_reserved" in done.stdout


def _mounts(service: dict) -> dict[str, dict]:
    return {mount["target"]: mount for mount in service["volumes"]}


def test_services_share_one_volume_and_mount_sources_read_only() -> None:
    config = _resolved(COMPOSE, env=_clean_env())
    assert set(config["services"]) == set(SERVICE_DOCKERFILE)
    assert list(config["volumes"]) == ["ckpt-data"]
    for name, service in config["services"].items():
        mounts = _mounts(service)
        assert mounts["/data"]["type"] == "volume" and mounts["/data"]["source"] == "ckpt-data", name
        for target, mount in mounts.items():
            if target != "/data":
                assert mount.get("read_only") is True, f"{name}: {target} must be read-only"
        assert service["read_only"] is True, name
        assert service["network_mode"] == "none", name
        assert Path(service["build"]["dockerfile"]).name == SERVICE_DOCKERFILE[name], name


def test_host_directory_replaces_the_named_volume(tmp_path: Path) -> None:
    config = _resolved(COMPOSE, env=_clean_env(CKPT_VOLUME=str(tmp_path)))
    for name, service in config["services"].items():
        mount = _mounts(service)["/data"]
        assert (mount["type"], mount["source"]) == ("bind", str(tmp_path)), name


def _eval_argv(services: dict, task: str = "summarize") -> list[str]:
    """What the eval service runs: no command, so the image's ``ckpt-eval`` builds each gate's command line from
    the service's environment (the same function the container calls)."""
    from ckpt_eval.ci import task_argv

    service = services["eval"]
    assert service.get("command") is None, "eval must run the image's default (the gates)"
    env = {k: "" if v is None else str(v) for k, v in service["environment"].items()}
    return task_argv(task, env)


def test_commands_follow_environment_settings() -> None:
    settings = {"MODEL_NAME": "m7", "DTYPE": "bfloat16", "TP_SIZE": "2", "PP_SIZE": "3", "MAX_BATCH_SIZE": "5"}
    services = _resolved(COMPOSE, env=_clean_env(**settings))["services"]
    convert = services["convert-nemo"]["command"]
    assert convert[0] == "nemo"
    for flag, value in [("--dtype", "bfloat16"), ("--tp_size", "2"), ("--pp_size", "3")]:
        assert convert[convert.index(flag) + 1] == value
    assert convert[convert.index("--output_dir") + 1] == "/data/checkpoints/m7"
    build = services["build"]["command"]
    assert build[build.index("--checkpoint_dir") + 1] == "/data/checkpoints/m7"
    assert build[build.index("--max_batch_size") + 1] == "5"
    evaluate = _eval_argv(services)
    assert evaluate[evaluate.index("--engine_dir") + 1] == "/data/engines/m7"
    assert evaluate[evaluate.index("--report") + 1] == "/data/reports/m7/summarize"
    assert evaluate[evaluate.index("--tensorrt_llm_rouge1_threshold") + 1] == "15"


def test_deepspeed_tag_is_passed_only_when_set() -> None:
    untagged = _resolved(COMPOSE, env=_clean_env())["services"]["convert-deepspeed"]["command"]
    assert untagged[0] == "deepspeed" and "--tag" not in untagged
    assert untagged[untagged.index("--checkpoint_dir") + 1] == "/src/checkpoint"
    assert untagged[untagged.index("--model_config") + 1] == "/src/model-config"
    tagged = _resolved(COMPOSE, env=_clean_env(DEEPSPEED_TAG="global_step7"))["services"]["convert-deepspeed"]
    assert tagged["command"][tagged["command"].index("--tag") + 1] == "global_step7"


def test_jax_step_is_passed_only_when_set() -> None:
    latest = _resolved(COMPOSE, env=_clean_env())["services"]["convert-jax"]["command"]
    assert latest[0] == "jax" and "--step" not in latest
    assert latest[latest.index("--checkpoint_dir") + 1] == "/src/checkpoint"
    assert latest[latest.index("--model_config") + 1] == "/src/model-config"
    stepped = _resolved(COMPOSE, env=_clean_env(JAX_STEP="300"))["services"]["convert-jax"]["command"]
    assert stepped[stepped.index("--step") + 1] == "300"


def test_gpu_reservations_only_without_the_cpu_override() -> None:
    gpu = _resolved(COMPOSE, env=_clean_env())["services"]
    cpu = _resolved(COMPOSE, COMPOSE_CPU, env=_clean_env())["services"]
    for name in ("build", "eval"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and devices[0]["capabilities"] == ["gpu"], name
        assert "deploy" not in cpu[name], name
    assert "--backend" in cpu["build"]["command"] and "tensorrt_rtx" in cpu["build"]["command"]
    evaluate = _eval_argv(cpu)
    assert evaluate[evaluate.index("--backend") + 1] == "torch"
    assert evaluate[evaluate.index("--checkpoint_dir") + 1] == "/data/checkpoints/model"


def test_cpu_override_needs_no_nvidia_image_nor_cuda_torch() -> None:
    """With compose.cpu.yaml every image (convert included) builds from a public base; torch from the CPU index."""
    gpu = _resolved(COMPOSE, env=_clean_env())["services"]
    cpu = _resolved(COMPOSE, COMPOSE_CPU, env=_clean_env())["services"]
    for name, service in cpu.items():
        args = service["build"]["args"]
        assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm", name
        assert service["image"] != gpu[name]["image"], f"{name}: the CPU image must not replace the GPU one"
        uses_torch = name != "build"
        assert args["TORCH_INDEX_URL"] == ("https://download.pytorch.org/whl/cpu" if uses_torch else ""), name
        assert gpu[name]["build"]["args"]["TORCH_INDEX_URL"] == "", f"{name}: NVIDIA's bases bring their torch"


def test_torch_source_trusted_host_and_build_network_reach_the_builds() -> None:
    settings = {"TORCH_INDEX_URL": "http://127.0.0.1:8000/", "CKPT_PIP_TRUSTED_HOST": "127.0.0.1"}
    for files in [(COMPOSE,), (COMPOSE, COMPOSE_CPU)]:
        resolved = _resolved(*files, env=_clean_env(**settings, CKPT_BUILD_NETWORK="host"))
        for name, service in resolved["services"].items():
            args = service["build"]["args"]
            assert (args["TORCH_INDEX_URL"], args["PIP_TRUSTED_HOST"]) == tuple(settings.values()), name
            assert service["build"]["network"] == "host", name
        for name, service in _resolved(*files, env=_clean_env())["services"].items():
            assert service["build"]["network"] == "default", name


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_CPU)], ids=["gpu", "cpu"])
def test_build_limits_are_passed_only_when_set(files: tuple[Path, ...]) -> None:
    """Unset, ckpt-build derives them from the checkpoint (never a fixed 1024 + 256 beyond the model's positions)."""
    services = _resolved(*files, env=_clean_env())["services"]
    for flag in ("--max_input_len", "--max_output_len", "--max_seq_len"):
        assert flag not in services["build"]["command"]
    assert "--max_input_length" not in _eval_argv(services)
    services = _resolved(*files, env=_clean_env(MAX_INPUT_LEN="96", MAX_OUTPUT_LEN="16"))["services"]
    build = services["build"]["command"]
    assert build[build.index("--max_input_len") + 1] == "96" and build[build.index("--max_output_len") + 1] == "16"
    evaluate = _eval_argv(services)
    assert evaluate[evaluate.index("--max_input_length") + 1] == "96"


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_CPU)], ids=["gpu", "cpu"])
def test_outputs_are_directories_below_the_volume(files: tuple[Path, ...]) -> None:
    """Outputs are renamed into place: never the mount point /data itself, always a directory below it."""
    services = _resolved(*files, env=_clean_env(MODEL_NAME=""))["services"]
    for name, service in services.items():
        command = _eval_argv(services, "perplexity") if name == "eval" else service["command"]
        outputs = [command[i + 1] for i, arg in enumerate(command) if arg in ("--output_dir", "--report")]
        assert outputs, f"{name} writes nothing?"
        for output in outputs:
            parts = Path(output).parts
            assert parts[:2] == ("/", "data") and len(parts) >= 4, f"{name}: {output} must be below /data/<kind>/"


def _pyproject(tool: str) -> dict:
    return tomllib.loads((REPO / "tools" / tool / "pyproject.toml").read_text())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_installs_only_its_tool_as_non_root(dockerfile: Path) -> None:
    tool, cli, base_family = TOOLS[dockerfile.name]
    text = dockerfile.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and base.group(1).startswith(base_family)
    copied = re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE)
    assert {src.split("/")[0] for src in copied} <= {"containers", "shared", "tools"}
    assert {src for src in copied if src.startswith("tools/")} <= {f"tools/{tool}", f"tools/{tool}/pyproject.toml"}
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0", "0:0")
    assert re.search(rf'^ENTRYPOINT \["ckpt-entry", "{cli}"\]$', text, re.MULTILINE)
    assert cli in _pyproject(tool)["project"]["scripts"], f"{cli} is not a script of tools/{tool}"


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_CPU)], ids=["gpu", "cpu"])
def test_image_extras_exist_in_the_tools(files: tuple[Path, ...]) -> None:
    """Every extra an image installs (Dockerfile default or compose build arg) is one its tool declares."""
    services = _resolved(*files, env=_clean_env())["services"]
    for name, service in services.items():
        dockerfile = REPO / service["build"]["dockerfile"]
        tool = TOOLS[dockerfile.name][0]
        default = re.search(r'^ARG EXTRAS="?([^"\n]*)"?$', dockerfile.read_text(), re.MULTILINE)
        extras = service["build"].get("args", {}).get("EXTRAS", default.group(1) if default else "")
        declared = set(_pyproject(tool)["project"].get("optional-dependencies", {}))
        missing = {extra for extra in extras.split(",") if extra} - declared
        assert not missing, f"{name}: tools/{tool} declares no extra {sorted(missing)}"


def test_pipeline_script_rejects_an_unknown_source() -> None:
    done = _run(str(REPO / "containers/pipeline.sh"), "gguf", env=_clean_env())
    assert done.returncode == 2 and "unknown source 'gguf'" in done.stderr


ENTRYPOINT = REPO / "containers/entrypoint.sh"


def _entry(*argv: str, user: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRYPOINT), *argv], capture_output=True, text=True, timeout=60, user=user)


def test_entrypoint_runs_the_tool_with_its_arguments_and_status(tmp_path: Path) -> None:
    done = _entry("sh", "-c", 'printf "%s|" "$@"; exit 7', "sh", "--output_dir", str(tmp_path / "new/out"), "a b")
    assert done.returncode == 7 and done.stdout == f"--output_dir|{tmp_path}/new/out|a b|", done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the entrypoint as another user")
@pytest.mark.parametrize("flag", ["--output_dir", "--report", "--report="])
def test_entrypoint_refuses_an_unwritable_output_in_one_line(flag: str) -> None:
    """A root-owned 0755 directory on the way: one line naming flag and path, exit 1, the tool never runs."""
    with tempfile.TemporaryDirectory() as top:  # pytest's tmp_path sits under a 0700 directory
        Path(top).chmod(0o755)
        parent = Path(top) / "root-owned"
        parent.mkdir(mode=0o755)
        _check_refusal(flag, parent)


def _check_refusal(flag: str, parent: Path) -> None:
    target = str(parent / "out")
    argv = [flag + target] if flag.endswith("=") else [flag, target]
    done = _entry("sh", "-c", 'echo RAN; mkdir -p "$1"', "sh", *argv, user=65534)
    assert done.returncode == 1 and "RAN" not in done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sh: error: {flag.rstrip('=')} {target}: {parent} is not writable")
    assert not (parent / "out").exists()
