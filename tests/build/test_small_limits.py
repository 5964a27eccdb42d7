"""Every combination of small limits that validation accepts builds for real (TensorRT-RTX on CPU).

TensorRT-RTX 1.7's compiler failed at batch 1 with 2..16 input tokens ("Graph contains more than one op named
..._iota") while one attention mask fed every layer; each layer now gets its own (``network._StepContext.mask``).
"""

from __future__ import annotations

import pytest
from checkpoints import layout_config, random_checkpoint
from conftest import run_cli

pytestmark = pytest.mark.trt
pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install 'ckpt-build[rtx]')")

# corners of batch 1..2 x input 1..16 x output 1..8, plus the reported case (1, 16, 8)
CORNERS = [(1, 1, 1), (1, 2, 1), (1, 16, 8), (1, 8, 3), (2, 1, 8), (2, 16, 1)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", layout_config("llama-gqa"))


@pytest.mark.parametrize("batch,inp,out", CORNERS, ids=lambda v: str(v))
def test_small_limits_build(tmp_path, ckpt, batch, inp, out):
    limits = ["--max_batch_size", batch, "--max_input_len", inp, "--max_output_len", out]
    rc, stdout, err = run_cli("--checkpoint_dir", ckpt, "--output_dir", tmp_path / "e", *limits, "--target", "sm89")
    assert rc == 0, err
    assert (tmp_path / "e" / "rank0.engine").stat().st_size > 0
    assert f"max_batch_size {batch}, max_input_len {inp}, max_seq_len {inp + out}" in stdout


@pytest.mark.parametrize("layout", ["gpt2", "falcon-old"])
def test_batch_one_builds_for_other_layouts(tmp_path, layout):
    ck = random_checkpoint(tmp_path / "ckpt", layout_config(layout))
    limits = ["--max_batch_size", "1", "--max_input_len", "8", "--max_output_len", "8", "--target", "sm89"]
    rc, _, err = run_cli("--checkpoint_dir", ck, "--output_dir", tmp_path / "e", *limits)
    assert rc == 0, err


def test_every_layer_and_tensor_has_a_unique_name(tmp_path, ckpt):
    """No "(Unnamed Layer* N)": TensorRT's errors then name the layer of our network they are about."""
    from ckpt_build.builder import make_logger
    from ckpt_build.contract import io_contract, rank_layout
    from ckpt_build.limits import Limits, resolve_limits
    from ckpt_build.lower_trt import TrtOps
    from ckpt_build.network import define_rank_network
    from ckpt_build.trt_api import load_trt
    from ckpt_build.weights import RankWeights
    from ckptfmt import load_config
    from ckptfmt.io import RankFileReader

    config = load_config(ckpt)
    build = resolve_limits(config, Limits(max_batch_size=1, max_input_len=16, max_output_len=8))
    trt = load_trt("tensorrt_rtx").trt
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    ops = TrtOps(trt, network, builder.create_optimization_profile(), io_contract(config, build).dims, logger)
    plan = rank_layout(config, 0, build)
    with RankFileReader(ckpt / "rank0.safetensors") as reader:
        define_rank_network(ops, plan, RankWeights(reader, plan))
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        names = [layer.name for layer in layers]
        tensors = [layer.get_output(i).name for layer in layers for i in range(layer.num_outputs)]
    assert len(set(names)) == len(names) and len(set(tensors)) == len(tensors)
    assert not [n for n in names + tensors if "Unnamed" in n]
    assert "layers.1/attention/attention#" in " ".join(names)
