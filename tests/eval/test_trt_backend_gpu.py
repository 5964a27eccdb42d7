"""The trt backend's GPU-side pieces that run without TensorRT: the probe on a real GPU, and the NCCL
communicator for ``set_communicator`` (created through libnccl with ctypes, checked by an all-reduce through
it). Skipped without CUDA GPUs; run on 2x H200 by hand (see docs/eval.md). ``torchrun --nproc-per-node 2 -m
tests.eval.test_trt_backend_gpu CKPT`` is the worker."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
NCCL_FLOAT32, NCCL_SUM = 7, 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_probe_reads_the_gpu():
    from ckpt_eval.trt_runtime import probe_runtime

    major, minor = torch.cuda.get_device_capability(0)
    gpu = probe_runtime(0).gpu
    assert gpu is not None and gpu.target == f"sm{major}{minor}" and gpu.name == torch.cuda.get_device_name(0)


@pytest.mark.skipif(torch.cuda.device_count() < 2 or shutil.which("torchrun") is None, reason="needs 2 CUDA GPUs")
def test_tp_communicator_all_reduces(tmp_path):
    pytest.importorskip("ckpt_convert")
    from tests.tiny_models import convert_tiny

    ckpt = convert_tiny("llama-gqa", tmp_path / "tp2", tp=2)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NCCL_NVLS_ENABLE": "0"}
    done = subprocess.run(
        ["torchrun", "--nproc-per-node", "2", "-m", "tests.eval.test_trt_backend_gpu", str(ckpt)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("all-reduce 3.0") == 2


def worker(ckpt: str) -> None:
    import torch.distributed as dist

    from ckpt_eval.distributed import init_parallel
    from ckpt_eval.nccl import capsule_address, tp_communicator
    from ckptfmt import load_config

    par = init_parallel(load_config(ckpt).mapping, "cuda")
    comm = tp_communicator(par)
    assert capsule_address(comm.capsule()) == comm.comm.value != 0
    x = torch.full((1024,), float(par.rank + 1), device=par.device)
    stream = torch.cuda.current_stream(par.device).cuda_stream
    result = comm.lib.ncclAllReduce(
        ctypes.c_void_p(x.data_ptr()),
        ctypes.c_void_p(x.data_ptr()),
        ctypes.c_size_t(x.numel()),
        ctypes.c_int(NCCL_FLOAT32),
        ctypes.c_int(NCCL_SUM),
        comm.comm,
        ctypes.c_void_p(stream),
    )
    torch.cuda.synchronize()
    assert result == 0 and bool((x == 3.0).all()), (result, x[:4])
    print(f"rank {par.rank}: all-reduce {x[0].item()}", flush=True)
    comm.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
