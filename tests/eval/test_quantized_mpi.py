"""Quantized checkpoints at tp 2 and pp 2 (ModelOpt's own exports at those layouts) run as two processes compute
what the tp 1 export computes in one (float32 copies of the float16 exports: in float16 the different summation
order of two ranks parts near-tied greedy tokens of these tiny random models)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ckpt_convert")

import numpy as np  # noqa: E402

from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckptfmt import RANK_FILE, RankFileReader, load_config, save_checkpoint  # noqa: E402
from tests.eval.test_model_parity import FP32_TOL, prompts, rel_err, run_ours  # noqa: E402
from tests.eval.test_mpi import result_file  # noqa: E402
from tests.mpi import MPIRUN, mpirun  # noqa: E402

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (openmpi-bin)")]

QUANTIZED = Path(__file__).resolve().parents[1] / "fixtures" / "modelopt_quantized" / "llama_gqa"
MODES = ["fp8_kv_fp8", "int8_sq", "int4_awq_kv_fp8"]
LAYOUTS = {"tp2_pp1": 2, "tp1_pp2": 2}


def float32_copy(src: Path, out: Path) -> Path:
    """``src`` with its float16 tensors (all but the quantized weights and float32 scales) in float32."""
    config = load_config(src)
    config.dtype = "float32"
    ranks = {}
    for rank in range(config.mapping.world_size):
        with RankFileReader(src / RANK_FILE.format(rank=rank)) as reader:
            ranks[rank] = {
                n: np.array(reader[n], dtype=np.float32 if reader[n].dtype == np.float16 else None)
                for n in reader.entries
            }
    save_checkpoint(out, config, ranks)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("quantized-fp32")
    return {
        (mode, layout): float32_copy(QUANTIZED / mode / layout, root / mode / layout)
        for mode in MODES
        for layout in ("tp1_pp1", *LAYOUTS)
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory, checkpoints):
    out = tmp_path_factory.mktemp("quantized-mpi")
    dirs = [str(checkpoints[mode, layout]) for mode in MODES for layout in LAYOUTS]
    proc = mpirun(sys.executable, "-m", "tests.eval.test_mpi", str(out), *dirs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", MODES)
def test_multi_rank_equals_single_rank(checkpoints, results, mode, layout):
    ranks = [
        torch.load(result_file(results, checkpoints[mode, layout], r), weights_only=True)
        for r in range(LAYOUTS[layout])
    ]
    for other in ranks[1:]:
        assert torch.equal(other["output_ids"], ranks[0]["output_ids"])
    single = run_ours(ModelRunner.from_dir(str(checkpoints[mode, "tp1_pp1"]), device="cpu"), prompts())
    assert torch.equal(ranks[0]["output_ids"], single["output_ids"])
    for ours, want in zip(ranks[0]["context_logits"], single["context_logits"]):
        assert rel_err(ours, want) <= FP32_TOL
