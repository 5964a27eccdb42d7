"""The ``trt`` backend without a GPU: contract planning, step scheduling, alias bindings, checks against
``bound_to``, the NCCL capsule, and ``EngineStepper`` end to end with the builder's network in place of TensorRT.

What these tests cannot cover: deserializing and executing a plan (``TrtExecutor``) and ``set_communicator``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ckpt_build")
pytest.importorskip("ckpt_convert")

from ckpt_eval.backends import RunnerError  # noqa: E402
from ckpt_eval.backends.trt_backend import binding_addresses, compare_engine_io  # noqa: E402
from ckpt_eval.engine_plan import StagePlan, schedule_step  # noqa: E402
from ckpt_eval.nccl import (  # noqa: E402
    UNIQUE_ID_BYTES,
    capsule_address,
    load_library,
    pointer_capsule,
    unique_id_from_bytes,
)
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckpt_eval.trt_runtime import EngineMismatch, Gpu, RuntimeFacts, check_bound_to, probe_runtime  # noqa: E402
from ckptfmt import CheckpointError  # noqa: E402
from ckptfmt.engine import BoundTo, IoTensor  # noqa: E402
from tests.eval.engine_network import engine_config, network_stepper  # noqa: E402
from tests.tiny_models import HEADS, HIDDEN, VOCAB, convert_tiny  # noqa: E402

HEAD = HIDDEN // HEADS


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    base = tmp_path_factory.mktemp("trt")
    hf = base / "hf-llama-gqa"
    return {
        "tp1": convert_tiny("llama-gqa", base / "tp1", hf_dir=hf),
        "pp2": convert_tiny("llama-gqa", base / "pp2", pp=2, hf_dir=hf),
        "tp2": convert_tiny("llama-gqa", base / "tp2", tp=2, hf_dir=hf),
        "gpt2": convert_tiny("gpt2", base / "gpt2"),
        "base": base,
    }


# ---- buffer planning from the io contract ----


def by_name(bindings):
    return {b.name: b for b in bindings}


def test_single_stage_bindings_for_prefill_and_decode(ckpts):
    config = engine_config(ckpts["tp1"], max_input_len=48, max_output_len=16)
    plan = StagePlan(config, 0)
    assert plan.first and plan.last and plan.max_seq_len == 64
    for seq in (7, 1):  # prefill, decode
        b = by_name(plan.bindings(3, seq))
        assert b["input_ids"].shape == (3, seq) and b["input_ids"].dtype == torch.int32
        assert b["position_ids"].shape == (3, seq) and b["position_ids"].dtype == torch.int32
        assert b["last_token_index"].shape == (3,)
        assert b["logits"].shape == (3, VOCAB) and b["logits"].dtype == torch.float32 and not b["logits"].is_input
        for layer in (0, 1):
            for kind in ("key", "value"):
                past, present = b[f"past_{kind}_{layer}"], b[f"present_{kind}_{layer}"]
                assert past.shape == present.shape == (3, 2, 64, HEAD)  # 2 KV heads
                assert past.is_input and not present.is_input
                assert present.storage == past.name == past.storage  # the alias plan: one buffer
        assert "hidden_states_input" not in b and "hidden_states_output" not in b
        assert len(b) == 4 + 8
    caches = plan.cache_buffers(3)
    assert [c.name for c in caches] == ["past_key_0", "past_value_0", "past_key_1", "past_value_1"]


def test_pipeline_stages_exchange_hidden_states(ckpts):
    config = engine_config(ckpts["pp2"])
    first, last = StagePlan(config, 0), StagePlan(config, 1)
    b0, b1 = by_name(first.bindings(2, 5)), by_name(last.bindings(2, 5))
    assert b0["hidden_states_output"].shape == (2, 5, HIDDEN) and "logits" not in b0
    assert "last_token_index" not in b0 and "input_ids" in b0
    assert b1["hidden_states_input"].shape == (2, 5, HIDDEN) and b1["hidden_states_input"].is_input
    assert "input_ids" not in b1 and b1["logits"].shape == (2, VOCAB)
    assert {n for n in b0 if n.startswith("past_")} == {"past_key_0", "past_value_0"}
    assert {n for n in b1 if n.startswith("past_")} == {"past_key_1", "past_value_1"}  # global layer index
    assert b1["present_value_1"].storage == "past_value_1"


def test_tensor_parallel_caches_hold_the_ranks_heads(ckpts):
    plan = StagePlan(engine_config(ckpts["tp2"]), 0)
    assert by_name(plan.bindings(1, 1))["past_key_0"].shape[1] == 1  # 2 KV heads over 2 ranks
    assert by_name(plan.bindings(1, 1))["logits"].shape == (1, VOCAB)  # full vocab on every rank


def edited(config, pp_rank=0, inputs=None, outputs=None):
    stage = config.io.stages[pp_rank]
    new = dataclasses.replace(
        stage,
        inputs=inputs(stage.inputs) if inputs else stage.inputs,
        outputs=outputs(stage.outputs) if outputs else stage.outputs,
    )
    stages = list(config.io.stages)
    stages[pp_rank] = new
    return dataclasses.replace(config, io=dataclasses.replace(config.io, stages=stages))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(inputs=lambda ins: ins + [IoTensor("attention_mask", "bool", ["batch", "seq"])]),
            "input 'attention_mask' is not in the contract",
        ),
        (
            dict(inputs=lambda ins: [t for t in ins if t.name != "last_token_index"]),
            "input 'last_token_index' is missing",
        ),
        (dict(outputs=lambda outs: [t for t in outs if t.name != "logits"]), "output 'logits' is missing"),
        (dict(outputs=lambda outs: outs + [IoTensor("scores", "float32", ["batch"])]), "output 'scores' is neither"),
        (
            dict(outputs=lambda outs: [dataclasses.replace(t, dtype="float16") if t.alias_of else t for t in outs]),
            "aliases 'past_key_0' but their dtype/shape differ",
        ),
        (
            dict(outputs=lambda outs: [t for t in outs if t.name != "present_value_1"]),
            "KV cache input 'past_value_1' has no output aliasing it",
        ),
        (
            dict(
                inputs=lambda ins: [t for t in ins if t.name != "past_value_1"],
                outputs=lambda outs: [t for t in outs if t.name != "present_value_1"],
            ),
            "no aliased KV cache 'past_value_1' for layer 1 of this stage",
        ),
    ],
)
def test_contract_this_runtime_cannot_feed_is_refused(ckpts, change, message):
    config = edited(engine_config(ckpts["tp1"]), **change)
    with pytest.raises(RunnerError, match=r"^config\.json: io\.stages\[0\]: .*" + message.replace("(", r"\(")):
        StagePlan(config, 0)


def test_limits_of_the_engine(ckpts):
    plan = StagePlan(engine_config(ckpts["tp1"], max_batch_size=2, max_input_len=16, max_output_len=8), 0)
    plan.check_batch(2, 24)
    plan.check_seq(16)
    with pytest.raises(RunnerError, match="batch of 3 sequences: the engine was built for 1..2"):
        plan.check_batch(3, 10)
    with pytest.raises(RunnerError, match="need 25 cache slots but the engine was built with max_seq_len 24"):
        plan.check_batch(1, 25)
    with pytest.raises(RunnerError, match="step of 17 tokens: the engine takes 1..16 tokens per step"):
        plan.check_seq(17)


# ---- step scheduling ----


def test_prefill_is_right_padded_with_positions_from_zero():
    tokens = torch.tensor([[0, 0, 11, 12, 13, 14], [21, 22, 23, 24, 25, 26], [0, 0, 0, 0, 31, 32]])
    feed = schedule_step(tokens, torch.arange(6), torch.tensor([2, 0, 4]), fill_id=7)
    assert feed.input_ids.tolist() == [[11, 12, 13, 14, 7, 7], [21, 22, 23, 24, 25, 26], [31, 32, 7, 7, 7, 7]]
    assert feed.position_ids.tolist() == [list(range(6))] * 3
    assert feed.last_token_index.tolist() == [3, 5, 1]
    assert feed.input_ids.dtype == feed.position_ids.dtype == feed.last_token_index.dtype == torch.int32


def test_decode_positions_are_each_rows_own_length():
    feed = schedule_step(torch.tensor([[5], [6], [7]]), torch.tensor([9]), torch.tensor([2, 0, 4]))
    assert feed.input_ids.tolist() == [[5], [6], [7]]
    assert feed.position_ids.tolist() == [[7], [9], [5]]  # 4 + 3, 6 + 3, 2 + 3 (prompt length + step 3)
    assert feed.last_token_index.tolist() == [0, 0, 0]


def test_chunk_after_the_padding_keeps_positions_consecutive():
    feed = schedule_step(torch.tensor([[0, 8, 9], [1, 2, 3]]), torch.tensor([3, 4, 5]), torch.tensor([4, 0]))
    assert feed.input_ids.tolist() == [[8, 9, 0], [1, 2, 3]]
    assert feed.position_ids.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert feed.last_token_index.tolist() == [1, 2]


@pytest.mark.parametrize(
    "tokens, slots, pad, message",
    [
        ([[0, 0], [1, 2]], [0, 1], [2, 0], "row 0 has no real token at slots 0..1"),
        ([[1, 2]], [0, 2], [0], "cache slots must be consecutive"),
        ([[1, 2]], [0], [0], "do not fit together"),
    ],
)
def test_bad_steps(tokens, slots, pad, message):
    with pytest.raises(RunnerError, match=message):
        schedule_step(torch.tensor(tokens), torch.tensor(slots), torch.tensor(pad))


# ---- bindings and the engine's own description ----


def allocate(plan, batch, seq):
    return {b.storage: torch.zeros(b.shape, dtype=b.dtype) for b in plan.bindings(batch, seq) if b.storage == b.name}


def test_aliased_outputs_get_their_inputs_address(ckpts):
    plan = StagePlan(engine_config(ckpts["tp1"]), 0)
    tensors = allocate(plan, 2, 3)
    addresses = {
        name: (is_input, shape, addr) for name, is_input, shape, addr in binding_addresses(plan.bindings(2, 3), tensors)
    }
    assert addresses["present_key_1"][2] == addresses["past_key_1"][2] == tensors["past_key_1"].data_ptr()
    assert addresses["logits"][2] == tensors["logits"].data_ptr() and addresses["logits"][0] is False
    assert len({a for _, _, a in addresses.values()}) == len(addresses) - 4  # 4 aliases share
    tensors["position_ids"] = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(RunnerError, match=r"engine tensor position_ids: buffer 'position_ids' is torch.int32\[2, 4\]"):
        binding_addresses(plan.bindings(2, 3), tensors)
    tensors["position_ids"] = torch.zeros(2, 3, dtype=torch.int32)
    del tensors["past_key_0"]
    with pytest.raises(RunnerError, match="no buffer 'past_key_0'"):
        binding_addresses(plan.bindings(2, 3), tensors)


def describe(plan):
    """What a deserialized engine matching the contract reports."""
    names = {torch.float32: "FLOAT", torch.int32: "INT32", torch.float16: "HALF"}
    return {
        b.name: (
            "INPUT" if b.is_input else "OUTPUT",
            names[b.dtype],
            None if b.is_input or b.storage == b.name else b.storage,
        )
        for b in plan.bindings(1, 1)
    }


def test_engine_description_is_compared_with_the_contract(ckpts):
    plan = StagePlan(engine_config(ckpts["tp1"]), 0)
    compare_engine_io(describe(plan), plan, "rank0.engine")
    wrong_alias = {**describe(plan), "present_key_0": ("OUTPUT", "FLOAT", "past_value_0")}
    with pytest.raises(
        RunnerError,
        match="rank0.engine: tensor present_key_0: the plan has OUTPUT FLOAT aliasing "
        "past_value_0, config.json says output torch.float32 aliasing past_key_0",
    ):
        compare_engine_io(wrong_alias, plan, "rank0.engine")
    wrong_dtype = {**describe(plan), "position_ids": ("INPUT", "INT64", None)}
    with pytest.raises(RunnerError, match="tensor position_ids"):
        compare_engine_io(wrong_dtype, plan, "rank0.engine")
    extra = {**describe(plan), "attention_mask": ("INPUT", "BOOL", None)}
    with pytest.raises(RunnerError, match=r"only in the plan: \['attention_mask'\]; only in config.json: -"):
        compare_engine_io(extra, plan, "rank0.engine")


# ---- what the engines are bound to ----

RTX = BoundTo("tensorrt_rtx", "1.7.1.116", ["sm80", "sm86", "sm89"], "ckpt-build", "0.1.0")
FULL = BoundTo("tensorrt", "10.13.0.35", ["sm90"], "ckpt-build", "0.1.0")
A100 = Gpu(0, "NVIDIA A100", "sm80")
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", "sm90")


def facts(rtx=None, full=None, gpu=None, reason="no CUDA GPU is visible (torch.cuda.is_available() is False)"):
    return RuntimeFacts(modules={"tensorrt": full, "tensorrt_rtx": rtx}, gpu=gpu, no_gpu_reason="" if gpu else reason)


def test_engines_that_can_run_pass():
    check_bound_to(RTX, facts(rtx="1.7.1.116", gpu=A100))
    check_bound_to(FULL, facts(full="10.13.0.35", gpu=H100))
    unchecked = dataclasses.replace(FULL, compute_capabilities=["local-gpu"])
    check_bound_to(unchecked, facts(full="10.13.0.35", gpu=A100))


@pytest.mark.parametrize(
    "bound, here, message",
    [
        (
            RTX,
            facts(rtx="1.7.1.116"),
            "no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT engines "
            "run only on a CUDA GPU (without one, run the checkpoint with --backend torch)",
        ),
        (
            RTX,
            facts(full="10.13.0.35", gpu=A100),
            "tensorrt_rtx is not installed (only tensorrt 10.13.0.35 is "
            "installed): pip install tensorrt-rtx-cu13-libs==1.7.1.116 "
            "tensorrt-rtx-cu13-bindings==1.7.1.116, or rebuild the engines "
            "with the installed TensorRT (ckpt-build --backend tensorrt)",
        ),
        (FULL, facts(gpu=H100), "tensorrt is not installed: pip install tensorrt==10.13.0.35"),
        (
            RTX,
            facts(rtx="1.8.0.20", gpu=A100),
            "tensorrt_rtx 1.8.0.20 is installed but plans load only in the release that built them",
        ),
        (
            RTX,
            facts(rtx="1.7.1.116", gpu=Gpu(1, "NVIDIA RTX 5090", "sm120")),
            "GPU 1 (NVIDIA RTX 5090) is sm120 but the engines target sm80,sm86,sm89: rebuild them "
            "(ckpt-build --backend tensorrt_rtx --target sm120)",
        ),
        (
            RTX,
            facts(rtx="1.7.1.116", gpu=H100),
            "GPU 0 (NVIDIA H100 80GB HBM3) is sm90, which TensorRT-RTX does not "
            "run on (it runs on sm75,sm80,sm86,sm89,sm120,sm121): install full "
            "TensorRT (pip install tensorrt) and rebuild with ckpt-build "
            "--backend tensorrt on this machine",
        ),
        (
            FULL,
            facts(full="10.13.0.35", gpu=A100),
            "is sm80 but the engines target sm90: rebuild them (ckpt-build --backend tensorrt on this machine)",
        ),
    ],
)
def test_engines_that_cannot_run_say_what_to_do(bound, here, message):
    with pytest.raises(EngineMismatch) as err:
        check_bound_to(bound, here, "out/engine")
    text = str(err.value)
    assert text.startswith(
        f"out/engine: engines built by {bound.module} {bound.module_version} for "
        f"{','.join(bound.compute_capabilities)} cannot run here: "
    )
    assert message in text and "\n" not in text


def test_nothing_installed_on_a_gpu_machine_is_the_install_line_alone():
    with pytest.raises(EngineMismatch) as err:
        check_bound_to(FULL, facts(gpu=H100), "e")
    assert str(err.value) == (
        "e: engines built by tensorrt 10.13.0.35 for sm90 cannot run here: tensorrt is not "
        "installed: pip install tensorrt==10.13.0.35"
    )


def test_every_problem_is_in_the_one_message():
    with pytest.raises(EngineMismatch) as err:
        check_bound_to(FULL, facts(rtx="1.7.1.116"), "e")
    assert "tensorrt is not installed (only tensorrt_rtx 1.7.1.116 is installed)" in str(err.value)
    assert "; no CUDA GPU is visible" in str(err.value)


def test_unknown_module_is_refused():
    with pytest.raises(EngineMismatch, match="bound_to.module 'onnxruntime' is unknown"):
        check_bound_to(dataclasses.replace(RTX, module="onnxruntime"), facts(), "e")


def test_probe_sees_this_machine():
    here = probe_runtime(0)
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        assert here.gpu is not None and here.gpu.target == f"sm{major}{minor}"
    else:
        assert here.gpu is None
        assert "CPU-only build" in here.no_gpu_reason or "no CUDA GPU" in here.no_gpu_reason
    try:
        import tensorrt_rtx_bindings
    except ImportError:
        assert here.modules["tensorrt_rtx"] is None
    else:
        assert here.modules["tensorrt_rtx"] == tensorrt_rtx_bindings.__version__
        assert "sm89" in here.rtx_targets and "sm90" not in here.rtx_targets


def test_engine_dir_without_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json: missing \(not an engine directory\?\)"):
        ModelRunner.from_dir(tmp_path, backend="trt")


@pytest.fixture(scope="module")
def rtx_engine(ckpts):
    """A real engine directory: ckpt-build with TensorRT-RTX on CPU, for sm86."""
    pytest.importorskip("tensorrt_rtx_bindings")
    out = ckpts["base"] / "engine"
    build = shutil.which("ckpt-build") or str(Path(sys.executable).parent / "ckpt-build")
    done = subprocess.run(
        [
            build,
            "--checkpoint_dir",
            str(ckpts["tp1"]),
            "--output_dir",
            str(out),
            "--max_batch_size",
            "2",
            "--max_input_len",
            "32",
            "--max_output_len",
            "8",
            "--target",
            "sm86",
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without GPU")
@pytest.mark.trt
def test_real_engine_directory_is_checked_before_tensorrt_loads_it(rtx_engine):
    with pytest.raises(EngineMismatch) as err:
        ModelRunner.from_dir(rtx_engine, backend="trt")
    assert str(err.value).startswith(f"{rtx_engine}: engines built by tensorrt_rtx ")
    assert "for sm86 cannot run here" in str(err.value) and "TensorRT engines run only on a CUDA GPU" in str(err.value)


@pytest.mark.trt
def test_a_tampered_plan_is_refused_before_anything_loads_it(rtx_engine, tmp_path):
    """The plans are hashed against the manifest first: TensorRT never deserializes a plan ckpt-build did not
    write (--skip_checksum passes it on to the next check)."""
    copy = tmp_path / "engine"
    shutil.copytree(rtx_engine, copy)
    plan = copy / "rank0.engine"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"rank0\.engine: sha256 checksum mismatch"):
        ModelRunner.from_dir(copy, backend="trt")
    with pytest.raises(RunnerError) as err:  # unchecked, the next refusal is this machine's lack of a GPU
        ModelRunner.from_dir(copy, backend="trt", checksums=False)
    assert "sha256" not in str(err.value)


@pytest.mark.trt
def test_deserializing_without_a_gpu_is_one_error_not_a_crash(rtx_engine):
    """The executor's TensorRT calls up to deserialization, on the real plan (TensorRT returns None on CPU)."""
    import tensorrt_rtx_bindings as trt

    from ckpt_eval.backends.trt_backend import TrtExecutor
    from ckpt_eval.distributed import Parallel
    from ckptfmt.engine import load_engine_config

    config = load_engine_config(rtx_engine)
    par = Parallel(config.checkpoint_config.mapping, 0, torch.device("cpu"))
    with pytest.raises(RunnerError, match=r"rank0\.engine: TensorRT could not deserialize the plan \(.+\)"):
        TrtExecutor(trt, rtx_engine / "rank0.engine", StagePlan(config, 0), par)


# ---- NCCL communicator pieces that run without NCCL ----


def test_capsule_holds_the_communicator_pointer():
    assert capsule_address(pointer_capsule(0x7F00DEADBEEF)) == 0x7F00DEADBEEF


def test_unique_id_bytes_round_trip():
    data = bytes(range(UNIQUE_ID_BYTES))
    uid = unique_id_from_bytes(data)
    assert ctypes.string_at(ctypes.addressof(uid), UNIQUE_ID_BYTES) == data
    with pytest.raises(RunnerError, match="expected 128 bytes, got 3"):
        unique_id_from_bytes(b"abc")


def test_missing_libnccl_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("CKPT_EVAL_NCCL_LIBRARY", "/nonexistent/libnccl.so.2")
    try:
        load_library()
    except RunnerError as err:
        assert "libnccl not found" in str(err) and "CKPT_EVAL_NCCL_LIBRARY" in str(err)
    else:
        pytest.skip("libnccl is installed here")


# ---- EngineStepper end to end, with the builder's network instead of TensorRT ----


def uneven_prompts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in (5, 11, 2)]


@pytest.mark.parametrize("variant", ["tp1", "gpt2"])
def test_engine_steps_generate_what_the_torch_backend_generates(ckpts, variant):
    ours = ModelRunner(network_stepper(ckpts[variant]), "trt")
    ref = ModelRunner.from_dir(ckpts[variant], backend="torch", device="cpu")
    kw = dict(max_new_tokens=10, return_dict=True, output_generation_logits=True, output_log_probs=True)
    a, b = ours.generate(uneven_prompts(), **kw), ref.generate(uneven_prompts(), **kw)
    assert torch.equal(a["output_ids"], b["output_ids"])
    assert torch.allclose(a["generation_logits"], b["generation_logits"], atol=1e-4)
    assert ours.model.executor.steps == 10  # one prefill + 9 decode steps
    assert ours.model.executor.connected_ranks == 1
    sampled = dict(max_new_tokens=6, top_k=5, temperature=0.8, random_seed=3)
    assert torch.equal(ours.generate(uneven_prompts(1), **sampled), ref.generate(uneven_prompts(1), **sampled))


def test_engine_steps_stop_at_the_end_token(ckpts):
    ours = ModelRunner(network_stepper(ckpts["tp1"]), "trt")
    ref = ModelRunner.from_dir(ckpts["tp1"], backend="torch", device="cpu")
    first = ref.generate(uneven_prompts(), max_new_tokens=4)
    end_id = int(first[1, 0, 11 + 2])  # the third token generated for prompt 1
    kw = dict(max_new_tokens=8, end_id=end_id, pad_id=0, return_dict=True)
    a, b = ours.generate(uneven_prompts(), **kw), ref.generate(uneven_prompts(), **kw)
    assert torch.equal(a["output_ids"], b["output_ids"]) and torch.equal(a["sequence_lengths"], b["sequence_lengths"])
    assert int(a["sequence_lengths"][1, 0]) == 11 + 2


def test_an_executor_that_cannot_open_is_one_error(ckpts):
    from ckpt_eval.backends.trt_backend import EngineStepper

    def refuse(plan, par):
        raise RunnerError("rank0.engine: TensorRT could not deserialize the plan (test)")

    with pytest.raises(CheckpointError, match=r"^rank0\.engine: TensorRT could not deserialize the plan \(test\)$"):
        EngineStepper(engine_config(ckpts["tp1"]), "cpu", refuse)


def test_engine_limits_and_context_logits_are_one_line_errors(ckpts):
    stepper = network_stepper(
        ckpts["tp1"], engine_config(ckpts["tp1"], max_batch_size=2, max_input_len=8, max_output_len=4)
    )
    ours = ModelRunner(stepper, "trt")
    with pytest.raises(RunnerError, match="batch of 3 sequences"):
        ours.generate(uneven_prompts(), max_new_tokens=2)
    with pytest.raises(RunnerError, match="need 14 cache slots but the engine was built with max_seq_len 12"):
        ours.generate([torch.arange(3, 13)], max_new_tokens=4)
    with pytest.raises(RunnerError, match="context logits are not available from an engine"):
        ours.generate([torch.arange(3, 6)], max_new_tokens=2, output_context_logits=True)
