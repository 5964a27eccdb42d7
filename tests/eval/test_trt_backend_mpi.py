"""``EngineStepper`` under mpirun (tp 2, pp 2): ranks exchange hidden states and all-reduce like engines would,
with the builder's network in place of TensorRT; the result must equal the single-process torch backend's.

``python -m tests.eval.test_trt_backend_mpi OUT CKPT`` is the worker each rank runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ckpt_build")
pytest.importorskip("ckpt_convert")

from ckpt_eval.runner import ModelRunner  # noqa: E402
from tests.mpi import MPIRUN  # noqa: E402
from tests.mpi import mpirun as run_mpi  # noqa: E402
from tests.tiny_models import VOCAB, convert_tiny  # noqa: E402

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (openmpi-bin)")]


def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in (4, 9, 6)]


def generate(runner):
    return runner.generate(prompts(), max_new_tokens=8, return_dict=True, output_generation_logits=True)


def worker(out: Path, ckpt: str) -> None:
    from ckpt_eval.distributed import shutdown
    from tests.eval.engine_network import network_stepper

    runner = ModelRunner(network_stepper(ckpt), "trt")
    result = generate(runner)
    assert runner.model.executor.connected_ranks == runner.model.par.tp_size
    torch.save({k: result[k] for k in ("output_ids", "generation_logits")}, out / f"rank{runner.rank}.pt")
    shutdown()  # before interpreter exit: gloo's worker threads must not outlive it


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_ranks_generate_what_one_process_generates(tmp_path, tp, pp):
    hf = tmp_path / "hf"
    ckpt = convert_tiny("llama-gqa", tmp_path / "ckpt", tp=tp, pp=pp, hf_dir=hf)
    single = convert_tiny("llama-gqa", tmp_path / "single", hf_dir=hf)
    done = run_mpi(sys.executable, "-m", "tests.eval.test_trt_backend_mpi", str(tmp_path), str(ckpt))
    assert done.returncode == 0, done.stderr[-3000:]
    ref = generate(ModelRunner.from_dir(single, backend="torch", device="cpu"))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["output_ids"], ref["output_ids"])  # every rank returns the shared tokens
        assert torch.allclose(got["generation_logits"], ref["generation_logits"], atol=1e-4)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
