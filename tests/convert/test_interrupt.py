"""Ctrl-C and SIGTERM stop a real ``ckpt-convert`` run: exit 130/143, one line, nothing published, no temp dir.

Each test starts the console script in a subprocess on a model with hundreds of tiny layers (thousands of
tensors: seconds of work, a few MB of disk), waits until a rank file is being written in the hidden temp dir
and signals it there. Ctrl-C at a terminal reaches the whole process group (workers included), so that case is
sent with ``killpg``; SIGTERM (``kill``, ``timeout``, ``docker stop``) reaches only the main process.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from safetensors.numpy import save_file

from tests.tiny_models import tiny_config

LAYERS = 400
NEMO1 = Path(__file__).resolve().parents[1] / "fixtures" / "nemo" / "llama_tp1.nemo"
CONSOLE = [str(Path(sys.executable).parent / "ckpt-convert")]
EXIT = {signal.SIGINT: (130, "ckpt-convert: interrupted"), signal.SIGTERM: (143, "ckpt-convert: terminated")}


@pytest.fixture(scope="module")
def slow_hf(tmp_path_factory) -> Path:
    """A LLaMA with LAYERS layers of hidden 64 (zeros), written with transformers' config and safetensors."""
    path = tmp_path_factory.mktemp("slow-hf")
    tiny_config("llama-gqa", num_hidden_layers=LAYERS).save_pretrained(path)
    h, f, kv = 64, 128, 32
    tensors = {
        "model.embed_tokens.weight": np.zeros((250, h), np.float32),
        "lm_head.weight": np.zeros((250, h), np.float32),
        "model.norm.weight": np.ones(h, np.float32),
    }
    shapes = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (h, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, h),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    for i in range(LAYERS):
        tensors.update({f"model.layers.{i}.{n}": np.zeros(s, np.float32) for n, s in shapes.items()})
    save_file(tensors, path / "model.safetensors")
    return path


@pytest.fixture(scope="module")
def slow_nemo(tmp_path_factory) -> Path:
    """The NeMo 1 fixture's layer 0 repeated LAYERS times, packed as a .nemo (tar) archive (torch.save weights)."""
    import torch

    path = tmp_path_factory.mktemp("slow-nemo") / "slow.nemo"
    with tarfile.open(NEMO1) as tar:
        hparams = yaml.safe_load(tar.extractfile("./model_config.yaml"))
        state = torch.load(io.BytesIO(tar.extractfile("./model_weights.ckpt").read()), weights_only=True)
    layer0 = {k.split("layers.0.", 1)[1]: v for k, v in state.items() if ".layers.0." in k}
    state = {k: v for k, v in state.items() if ".layers." not in k}
    for i in range(LAYERS):
        state.update({f"model.decoder.layers.{i}.{n}": v for n, v in layer0.items()})
    members = {"model_config.yaml": yaml.safe_dump({**hparams, "num_layers": LAYERS}).encode()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members["model_weights.ckpt"] = buffer.getvalue()
    with tarfile.open(path, "w:") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def start(source: str, model: Path, out: Path, workers: int) -> subprocess.Popen:
    flag = "--model_dir" if source == "hf" else "--nemo_ckpt_path"
    cmd = [*CONSOLE, source, flag, str(model), "--output_dir", str(out), "--tp_size", "2", "--workers", str(workers)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def assert_stopped_cleanly(proc: subprocess.Popen, sig: int, out: Path, children: list) -> None:
    signalled = time.monotonic()
    stdout, err = proc.communicate(timeout=60)
    assert time.monotonic() - signalled < 15, "not stopped promptly"
    code, line = EXIT[sig]
    assert proc.returncode == code, f"exit {proc.returncode}: {err}"
    assert err == line + "\n" and stdout == "", err
    assert not out.exists(), "published despite the interrupt"
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")) == [], "temp dir left"
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], "worker processes left running"


@pytest.mark.parametrize(
    ("source", "sig", "workers", "group"),
    [
        ("hf", signal.SIGINT, 1, False),
        ("hf", signal.SIGTERM, 1, False),
        ("hf", signal.SIGTERM, 2, False),
        ("hf", signal.SIGINT, 2, True),  # Ctrl-C at a terminal: the workers get it too
        ("nemo", signal.SIGTERM, 1, False),
        ("nemo", signal.SIGINT, 2, True),
    ],
    ids=lambda v: signal.Signals(v).name if isinstance(v, signal.Signals) else str(v),
)
def test_signal_mid_conversion(source, sig, workers, group, slow_hf, slow_nemo, tmp_path):
    out = tmp_path / "out"
    proc = start(source, slow_hf if source == "hf" else slow_nemo, out, workers)
    wait_for(lambda: list(tmp_path.glob(".out.tmp-*/rank*.safetensors")), proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    if workers > 1:
        assert len(children) >= workers  # the signal reaches a run whose workers are busy
    (os.killpg if group else os.kill)(proc.pid, sig)
    assert_stopped_cleanly(proc, sig, out, children)


@pytest.mark.parametrize("delay", [0.1, 0.4])
def test_ctrl_c_while_workers_start(delay, slow_hf, tmp_path):
    """Ctrl-C reaching freshly spawned workers while they still import: no traceback from them either."""
    out = tmp_path / "out"
    proc = start("hf", slow_hf, out, 2)
    wait_for(lambda: len(psutil.Process(proc.pid).children()) >= 2, proc)
    time.sleep(delay)  # the workers are importing (site-packages, numpy, ckptfmt)
    children = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    assert_stopped_cleanly(proc, signal.SIGINT, out, children)


@pytest.mark.parametrize("workers", [1, 2])
def test_repeated_ctrl_c(workers, slow_hf, tmp_path):
    """An impatient user pressing Ctrl-C again and again: the first one wins, the cleanup still runs to its end."""
    out = tmp_path / "out"
    proc = start("hf", slow_hf, out, workers)
    wait_for(lambda: list(tmp_path.glob(".out.tmp-*/rank*.safetensors")), proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.001)
    assert_stopped_cleanly(proc, signal.SIGINT, out, children)


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_numpy_imports(sig, slow_hf, tmp_path):
    """Before ``run_main`` can hold the signals, ckptfmt's imports (numpy, ml_dtypes) run for a while; a signal then
    is held and still ends the run in one line."""
    out = tmp_path / "out"
    proc = start("hf", slow_hf, out, 1)
    wait_for(lambda: "numpy" in _maps(proc.pid), proc)
    os.kill(proc.pid, sig)
    assert_stopped_cleanly(proc, sig, out, [])


def _catches_sigterm(pid: int) -> bool:
    """True once the process has installed a SIGTERM handler (``run_main`` did; Python's default does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_importing(sig, slow_hf, tmp_path):
    """From the moment ``run_main`` holds the signals (before the sources and numpy-heavy modules are imported)."""
    out = tmp_path / "out"
    proc = start("hf", slow_hf, out, 1)
    wait_for(lambda: _catches_sigterm(proc.pid), proc)
    os.kill(proc.pid, sig)
    assert_stopped_cleanly(proc, sig, out, [])


def test_sigkill_publishes_nothing(slow_hf, tmp_path):
    """SIGKILL cannot be cleaned up after: the hidden temp dir may stay, but nothing appears at --output_dir."""
    out = tmp_path / "out"
    proc = start("hf", slow_hf, out, 1)
    wait_for(lambda: list(tmp_path.glob(".out.tmp-*/rank*.safetensors")), proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
