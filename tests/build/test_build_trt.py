"""Real TensorRT-RTX builds on CPU: every layout, dtype, weight-only quantization and (tp, pp) layout."""

from __future__ import annotations

import re

import pytest
from checkpoints import LAYOUTS, layout_config, random_checkpoint
from conftest import plan_strings, run_cli

from ckptfmt.engine import check_engine_dir

pytestmark = pytest.mark.trt
pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install 'ckpt-build[rtx]')")

LIMITS = ["--max_batch_size", "4", "--max_input_len", "32", "--max_output_len", "32", "--target", "sm86,sm89"]


def build(tmp_path, config, *extra: str):
    ckpt = random_checkpoint(tmp_path / "ckpt", config)
    out = tmp_path / "engine"
    rc, stdout, stderr = run_cli("--checkpoint_dir", ckpt, "--output_dir", out, *LIMITS, *extra)
    assert rc == 0, stderr
    return out


def assert_plans_name_their_io(out) -> None:
    """Each rank's plan came back and its text names every input and output of its stage's contract."""
    engine = check_engine_dir(out, hash_files=True)
    for rank in range(engine.world_size):
        stage = engine.stage_of_rank(rank)
        words = set()
        for line in plan_strings(out / f"rank{rank}.engine"):
            words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line))
        missing = [t.name for t in stage.inputs + stage.outputs if t.name not in words]
        assert not missing, f"rank{rank}.engine does not name {missing}"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_layout_builds(tmp_path, layout, dtype):
    out = build(tmp_path, layout_config(layout, dtype=dtype))
    assert_plans_name_their_io(out)


@pytest.mark.parametrize("quant,group", [("int8", None), ("int4", None), ("int4", 32), ("int8", 32)])
@pytest.mark.parametrize("layout", ["llama-gqa", "gpt2"])
def test_weight_only_builds(tmp_path, layout, quant, group):
    out = build(tmp_path, layout_config(layout, quant=quant, group_size=group))
    assert_plans_name_their_io(out)


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("layout", ["llama-gqa", "gpt2", "falcon-old"])
def test_parallel_layouts_build(tmp_path, layout, tp, pp):
    out = build(tmp_path, layout_config(layout, tp=tp, pp=pp), "--workers", "2")
    engine = check_engine_dir(out)
    assert engine.world_size == tp * pp
    assert_plans_name_their_io(out)
    if pp == 2:
        assert "hidden_states_output" in [t.name for t in engine.io.stage(0).outputs]
        assert "hidden_states_input" in [t.name for t in engine.io.stage(1).inputs]
        assert engine.io.stage(0).layers == [0] and engine.io.stage(1).layers == [1]


def test_parallel_embedding_and_int4_tp2(tmp_path):
    config = layout_config("gpt2", tp=2, quant="int4", use_parallel_embedding=True)
    assert_plans_name_their_io(build(tmp_path, config))


def test_engine_config_records_build_and_binding(tmp_path):
    out = build(tmp_path, layout_config("llama-gqa", tp=2), "--use_gemm_plugin", "float16", "--logits_dtype", "float16")
    engine = check_engine_dir(out)
    assert engine.bound_to.module == "tensorrt_rtx"
    assert engine.bound_to.compute_capabilities == ["sm86", "sm89"]
    b = engine.build_config
    assert (b.max_batch_size, b.max_input_len, b.max_output_len, b.max_seq_len) == (4, 32, 32, 64)
    assert b.plugin_config == {"use_gemm_plugin": "float16"}
    stage = engine.io.stage(0)
    assert stage.tensor("logits").dtype == "float16"
    assert stage.tensor("logits").shape == ["batch", 250]
    assert stage.aliases()["present_key_1"] == "past_key_1"
    assert stage.tensor("past_key_0").shape == ["batch", 1, 64, 16]  # 2 KV heads over tp 2
    assert engine.pretrained_config["mapping"]["tp_size"] == 2


def test_modules_without_stream_serialization_still_write_the_plan(tmp_path):
    """A TensorRT whose Builder lacks build_serialized_network_to_stream: one in-memory plan, written in chunks."""
    import hashlib

    from ckpt_build.builder import _stream_writer, make_logger
    from ckpt_build.trt_api import load_trt

    module = load_trt("tensorrt_rtx")
    trt = module.trt

    class BuilderWithoutStreaming:
        def __init__(self, builder):
            self.build_serialized_network = builder.build_serialized_network

    builder = trt.Builder(make_logger(trt))
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (2, 3))
    network.mark_output(network.add_activation(x, trt.ActivationType.RELU).get_output(0))
    config = builder.create_builder_config()
    module.set_targets(config, ["sm89"])
    writer = _stream_writer(trt, tmp_path / "plan")
    assert module.serialize(BuilderWithoutStreaming(builder), network, config, writer)
    writer.file.close()
    data = (tmp_path / "plan").read_bytes()
    assert writer.size == len(data) > 0 and writer.sha.hexdigest() == hashlib.sha256(data).hexdigest()


def test_all_token_logits_build(tmp_path):
    out = build(tmp_path, layout_config("gptneox", tp=2), "--gather_all_token_logits")
    engine = check_engine_dir(out)
    assert engine.io.stage(0).tensor("logits").shape == ["batch", "seq", 250]
    assert not engine.build_config.gather_last_token_logits
    assert_plans_name_their_io(out)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("alibi", ["alibi", "alibi_with_scale"])
def test_alibi_builds(tmp_path, alibi, tp):
    """ALiBi: the slope x key bias is a constant added to the scores of an explicit attention (no attention layer
    takes it); each tp rank holds its own heads' slopes."""
    config = layout_config("falcon-old", tp=tp, position_embedding_type=alibi)
    assert_plans_name_their_io(build(tmp_path, config))
