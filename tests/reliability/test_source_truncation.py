"""A torch-pickle source changed while it is converted: a ``pytorch_model.bin``, a NeMo ``model_weights.ckpt``, a
torch_dist ``.distcp`` file, and ``.nemo`` archives whose weights are read in place. Truncated (with a memory map
that would be SIGBUS: the process dies without a word) or rewritten in place with the same size: one line naming the
file, exit 1, nothing published, no temp dir left; and the file is never memory-mapped."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import yaml
from safetensors.numpy import load_file

from tests.reliability.conftest import SLOW_LAYERS
from tests.reliability.helpers import assert_failed_cleanly, kill_tree, start, wait_for

torch = pytest.importorskip("torch")

NEMO1 = Path(__file__).resolve().parents[1] / "fixtures" / "nemo" / "llama_tp1.nemo"
LAYER = "model.decoder.layers.0."


@pytest.fixture(scope="module")
def slow_bin(slow_llama, tmp_path_factory) -> Path:
    """The slow LLaMA (thousands of small tensors) as ``pytorch_model.bin``."""
    path = tmp_path_factory.mktemp("bin") / "model"
    shutil.copytree(slow_llama, path)
    tensors = load_file(path / "model.safetensors")
    torch.save({n: torch.from_numpy(a) for n, a in tensors.items()}, path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return path


@pytest.fixture(scope="module")
def slow_nemo(tmp_path_factory) -> Path:
    """The fixture's NeMo 1 LLaMA with SLOW_LAYERS copies of its layer 0: an extracted directory."""
    root = tmp_path_factory.mktemp("nemo") / "extracted"
    with tarfile.open(NEMO1) as tar:
        tar.extractall(root, filter="data")
    state = torch.load(root / "model_weights.ckpt", weights_only=True)
    layer = {k[len(LAYER) :]: v for k, v in state.items() if k.startswith(LAYER)}
    state = {k: v for k, v in state.items() if ".layers." not in k}
    for i in range(SLOW_LAYERS):
        state.update({f"model.decoder.layers.{i}.{k}": v if v is None else v.clone() for k, v in layer.items()})
    torch.save(state, root / "model_weights.ckpt")
    config = yaml.safe_load((root / "model_config.yaml").read_text())
    (root / "model_config.yaml").write_text(yaml.safe_dump({**config, "num_layers": SLOW_LAYERS}))
    return root


@pytest.fixture(scope="module")
def slow_dist(slow_nemo, tmp_path_factory) -> Path:
    """The same model as a NeMo 1 directory with a torch_dist ``model_weights/`` (layers stacked, as Megatron-core
    saves them), written by torch's own DCP writer."""
    import torch.distributed.checkpoint as dcp

    root = Path(shutil.copytree(slow_nemo, tmp_path_factory.mktemp("dist") / "extracted"))
    state = torch.load(root / "model_weights.ckpt", weights_only=True)
    stacked = {k.replace(".layers.0.", ".layers."): v for k, v in state.items() if ".layers.0." in k and v is not None}
    stacked = {
        k: torch.stack([state[k.replace(".layers.", f".layers.{i}.")] for i in range(SLOW_LAYERS)]) for k in stacked
    }
    stacked.update({k: v for k, v in state.items() if ".layers." not in k and v is not None})
    (root / "model_weights.ckpt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process": it is
        dcp.save(stacked, checkpoint_id=str(root / "model_weights"), no_dist=True)
    return root


def _copy(source: Path, tmp_path: Path, archive: bool) -> Path:
    if not archive:
        return Path(shutil.copytree(source, tmp_path / "src"))
    path = tmp_path / "model.nemo"
    with tarfile.open(path, "w") as tar:  # uncompressed, as NeMo writes it
        for item in sorted(source.rglob("*")):
            if item.is_file():
                tar.add(item, f"./{item.relative_to(source).as_posix()}")
    return path


def _started(kind: str, source: Path, out: Path, workers: int = 1):
    flag = "--model_dir" if kind == "hf" else "--nemo_ckpt_path"
    proc = start(kind, flag, source, "--output_dir", out, "--tp_size", "2", "--workers", str(workers))
    wait_for(lambda: list(out.parent.glob(f".{out.name}.tmp-*/rank*.safetensors")), proc)
    return proc


def _mapped(proc, path: Path) -> list[str]:
    """Lines of the process's (and its workers') memory maps that map ``path``."""
    lines = []
    for pid in [proc.pid, *(int(p) for p in _children(proc.pid))]:
        with contextlib.suppress(OSError):  # the process ended meanwhile
            lines += [ln for ln in Path(f"/proc/{pid}/maps").read_text().splitlines() if ln.endswith(str(path))]
    return lines


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def _finish(proc) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        kill_tree(proc)
    return proc.returncode, err


# (source fixture, subcommand, the weight file inside it; "" with archive: the .nemo itself, weights read in place)
TRUNCATED = {
    "bin": ("slow_bin", "hf", "pytorch_model.bin", False, 1),
    "bin-2-workers": ("slow_bin", "hf", "pytorch_model.bin", False, 2),
    "nemo-ckpt": ("slow_nemo", "nemo", "model_weights.ckpt", False, 1),
    "nemo-archive": ("slow_nemo", "nemo", "", True, 1),
    "distcp": ("slow_dist", "nemo", "model_weights/__0_0.distcp", False, 1),
    "distcp-nemo-archive": ("slow_dist", "nemo", "", True, 1),
}


@pytest.mark.parametrize(("fixture", "kind", "name", "archive", "workers"), TRUNCATED.values(), ids=TRUNCATED)
def test_truncated_mid_conversion(fixture, kind, name, archive, workers, request, tmp_path):
    source, out = _copy(request.getfixturevalue(fixture), tmp_path, archive), tmp_path / "out"
    weights = source / name if name else source
    size = weights.stat().st_size
    proc = _started(kind, source, out, workers)
    assert _mapped(proc, weights) == []
    extracted = [p for p in tmp_path.glob(f".{out.name}.tmp-nemo-*/**/*") if p.suffix in (".ckpt", ".distcp")]
    assert extracted == []  # an archive's weights are read in place, not copied beside the output
    os.truncate(weights, size // 2)
    rc, err = _finish(proc)
    assert_failed_cleanly(rc, err, out, str(weights), f"truncated ({size} -> {size // 2} bytes) during the conversion")
    assert "nothing was written" in err


@pytest.mark.parametrize(
    ("fixture", "kind", "name"),
    [("slow_bin", "hf", "pytorch_model.bin"), ("slow_nemo", "nemo", "model_weights.ckpt")],
    ids=["bin", "nemo-ckpt"],
)
def test_rewritten_in_place_mid_conversion(fixture, kind, name, request, tmp_path):
    """Same size, different bytes: the mtime says so."""
    source, out = _copy(request.getfixturevalue(fixture), tmp_path, archive=False), tmp_path / "out"
    weights = source / name
    size = weights.stat().st_size
    proc = _started(kind, source, out)
    with open(weights, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(4096))
    rc, err = _finish(proc)
    assert weights.stat().st_size == size
    assert_failed_cleanly(rc, err, out, str(weights), "modified during the conversion")
