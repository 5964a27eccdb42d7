"""The fused decode step on FP8 checkpoints: e4m3 weight codes read by the GEMVs, inputs quantized as the torch
backend's ``quantized.InputQuant`` does (triton's interpreter on CPU, compiled on a GPU).

The checkpoints are random float models quantized to FP8 by ``ckpt_eval.fp8_quantize`` (per-tensor scales,
calibrated activation scales). ModelOpt's own FP8, INT8 SmoothQuant and KV-cache exports run through the fused
step in tests/test_executor_parity.py.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported
triton = pytest.importorskip("triton")

import importlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import triton.language as tl  # noqa: E402

from ckpt_eval import decode_kernels  # noqa: E402
from ckpt_eval.fp8_quantize import quantize_fp8  # noqa: E402
from ckpt_eval.fused_decode import FusedDecoder, unsupported  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckptfmt import CheckpointConfig, RankFileReader, load_config, save_checkpoint  # noqa: E402
from tests.eval.test_fused_decode import BASE, DEVICE, VARIANTS, load, teacher_forced_errors  # noqa: E402
from tests.random_checkpoint import random_checkpoint  # noqa: E402

if not CUDA:
    importlib.reload(decode_kernels)
CALIBRATION = torch.arange(3, 40).view(1, -1)
# max |fused - torch backend| / max |torch backend| over the steps. float32: rounding (the fused GEMV applies
# the weight scale to the row's sum, the torch backend to each weight). float16: the torch backend also rounds
# each dequantized weight to float16 (2**-11), as the float16 model's own tolerance allows
TOLERANCE = {"float32": 2e-5, "float16": 5e-3, "bfloat16": 3e-2}
FP8_VARIANTS = ["llama-gqa", "float16", "bfloat16", "all-biases", "mqa-gelu-tanh"]


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    """The torch backend as the emulation it is on CPU (a GPU's native FP8 GEMMs: test_quantized_native.py)."""
    monkeypatch.setenv("CKPT_EVAL_NATIVE_QUANT", "0")


def fp8_checkpoint(tmp_path, name: str, **extra):
    config = CheckpointConfig.from_dict({**BASE, **VARIANTS[name], **extra}).check()
    src = random_checkpoint(tmp_path / f"{name}-float", config, seed=len(name))
    dst = tmp_path / f"{name}-fp8"
    return dst, quantize_fp8(src, dst, CALIBRATION)


@pytest.mark.parametrize("name", FP8_VARIANTS)
def test_fp8_fused_step_matches_torch_backend(tmp_path, name):
    path, config = fp8_checkpoint(tmp_path, name)
    model = load(path, config)
    assert model.transformer.blocks()[0].attention.qkv.quant_weight.codes.dtype == torch.float8_e4m3fn
    assert unsupported(model) is None
    errors = teacher_forced_errors(model, FusedDecoder(model), prompt_len=5, steps=6)
    assert max(errors) <= TOLERANCE[config.dtype], errors


def test_fp8_fused_greedy_tokens_equal_torch_backend(tmp_path):
    """``compile="fused"`` through ModelRunner on the FP8 checkpoint gives the eager torch backend's tokens."""
    path, _ = fp8_checkpoint(tmp_path, "llama-gqa")
    eager = ModelRunner.from_dir(path, device=DEVICE)
    fused = ModelRunner.from_dir(path, device=DEVICE, compile="fused")
    assert fused.model.decode_path == "fused"
    for prompt in (torch.tensor([1, 2, 3, 4, 5]), torch.tensor([9, 8, 7])):
        assert torch.equal(fused.generate([prompt], max_new_tokens=10), eager.generate([prompt], max_new_tokens=10))


def test_nan_weight_codes_are_refused(tmp_path):
    path, config = fp8_checkpoint(tmp_path, "llama-gqa")
    with RankFileReader(path / "rank0.safetensors") as reader:
        tensors = {n: reader[n].copy() for n in reader.entries}
    name = "transformer.layers.1.mlp.proj.weight"
    tensors[name].view("uint8")[0, 3] = 0x7F  # e4m3fn's NaN
    save_checkpoint(tmp_path / "nan", load_config(path), {0: tensors})
    assert "NaN" in unsupported(load(tmp_path / "nan", config))


@triton.jit
def _rounding_kernel(X, E4M3, INT8, S, N: tl.constexpr):
    i = tl.arange(0, N)
    y = tl.math.div_rn(tl.load(X + i), tl.load(S))
    tl.store(E4M3 + i, decode_kernels._round_e4m3(tl.clamp(y, -448.0, 448.0)))
    tl.store(INT8 + i, decode_kernels._rint(tl.clamp(y, -128.0, 127.0)))


@pytest.mark.parametrize("scale", [1.0, 0.37, 3e-3])
def test_kernel_rounding_equals_torch_casts(scale):
    """``_round_e4m3`` and ``_rint`` give torch's float8_e4m3fn cast and ``round`` for every e4m3 value, every
    midpoint and its neighbours (ties to even), half-integers, random values, subnormals and saturation."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    codes = codes[torch.isfinite(codes)].unique()
    mids = (codes[1:] + codes[:-1]) / 2
    gen = torch.Generator().manual_seed(0)
    x = (
        torch.cat(
            [
                codes,
                mids,
                mids.nextafter(torch.full_like(mids, 1e9)),
                mids.nextafter(torch.full_like(mids, -1e9)),
                torch.arange(-130, 130).float() + 0.5,
                torch.randn(3000, generator=gen) * 100,
                torch.randn(1000, generator=gen) * 0.01,
                torch.tensor([500.0, -1000.0, 1e-9, -0.0, 1e-30]),
            ]
        )
        * scale
    )
    n = 1 << (x.numel() - 1).bit_length()
    x = torch.cat([x, torch.zeros(n - x.numel())]).to(DEVICE)
    e4m3, int8 = torch.empty_like(x), torch.empty_like(x)
    s = torch.tensor([scale], device=DEVICE)
    _rounding_kernel[(1,)](x, e4m3, int8, s, N=n)
    y = x / s
    assert torch.equal(e4m3, y.clamp(-448, 448).to(torch.float8_e4m3fn).float())
    assert torch.equal(int8, y.round().clamp(-128, 127))


@pytest.mark.parametrize("gemm", ["rows", "dot"])
def test_fp8_fused_batch_matches_torch_backend(tmp_path, gemm):
    """A left-padded batch of 3 through ``gemv_batch_kernel`` reading e4m3 codes, both formulations."""
    path, config = fp8_checkpoint(tmp_path, "all-biases")
    model = load(path, config)
    fused = FusedDecoder(model, gemm=gemm)
    errors = teacher_forced_errors(model, fused, prompt_len=5, steps=2, pad=[2, 0, 4])
    assert max(errors) <= TOLERANCE[config.dtype], errors


def test_int8_per_token_kv_int8_fused_batch(tmp_path):
    """ModelOpt's int8 SmoothQuant export with per-token activation scales (one per row of the batch) and an
    int8 KV cache, in a left-padded batch of 2."""
    from ckptfmt.reconcile import reconcile
    from tests.test_executor_parity import QUANTIZED, quantized_variant

    src = tmp_path / "src"
    shutil.copytree(QUANTIZED / "int8_sq_kv_int8" / "tp1_pp1", src)
    config_json = json.loads((src / "config.json").read_text())
    config_json["quantization"]["quant_algo"] = "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
    (src / "config.json").write_text(json.dumps(config_json))
    quantized_variant(src, tmp_path / "q")
    model = load(tmp_path / "q", reconcile(load_config(tmp_path / "q"), tmp_path / "q"))
    assert unsupported(model) is None
    errors = teacher_forced_errors(model, FusedDecoder(model), prompt_len=6, steps=2, pad=[0, 3])
    assert max(errors) <= TOLERANCE["float32"], errors


def same_steps_either_side(model, prompt_len: int, steps: int, pad: list[int], **options) -> None:
    """The fused step with dense's and proj's inputs quantized by the kernels that write them (the attention,
    the fc GEMV) gives the logits, bit for bit, of the step whose GEMVs quantize their inputs themselves."""
    at_producer = FusedDecoder(model, **options)
    in_gemv = FusedDecoder(model, quant_at_producer=False, **options)
    ops = at_producer.layers[0]
    assert ops.attn_out_quant is not None and ops.mlp_out_quant is not None
    assert ops.dense.flags is not None and ops.dense.flags["AQ"] == "none"
    assert in_gemv.layers[0].attn_out_quant is None and in_gemv.layers[0].dense.flags["AQ"] != "none"
    gen = torch.Generator().manual_seed(1)
    b = len(pad)
    tokens = torch.randint(0, model.spec.vocab_size, (b, prompt_len + steps), generator=gen).to(DEVICE)
    pad_t = torch.tensor(pad, device=DEVICE)
    model.setup_cache(b, prompt_len + steps)
    model(tokens[:, :prompt_len], torch.arange(prompt_len, device=DEVICE), pad_t, last_only=True)
    for i in range(prompt_len, prompt_len + steps):
        token, slot = tokens[:, i : i + 1], torch.tensor([i], device=DEVICE)
        want = in_gemv(token, slot, pad_t).clone()  # both write the same k, v at slot
        assert torch.equal(at_producer(token, slot, pad_t), want), f"step at slot {i}"


@pytest.mark.parametrize("case", ["one row", "batch rows", "batch dot", "long cache"])
def test_fp8_inputs_quantized_at_producer(tmp_path, case):
    """FP8: the attention kernel (one program per head, or the split partials' combine kernel past 512 cached
    positions) and the fc/gate GEMV (one row, or a batch on CUDA cores or tensor cores) store dense's and
    proj's inputs quantized."""
    long = case == "long cache"
    path, config = fp8_checkpoint(tmp_path, "all-biases", **({"max_position_embeddings": 1024} if long else {}))
    model = load(path, config)
    pad = [0] if case in ("one row", "long cache") else [2, 0, 4]
    options = {"gemm": case.split()[1]} if case.startswith("batch") else {}
    same_steps_either_side(model, 600 if long else 5, 2, pad, **options)


def test_int8_sq_inputs_quantized_at_producer(tmp_path):
    """INT8 SmoothQuant per tensor with pre-quant (smoothing) scales on dense and proj (ModelOpt's export):
    the producers multiply by them and round to int8 as the GEMVs did."""
    from ckptfmt.reconcile import reconcile
    from tests.test_executor_parity import QUANTIZED, quantized_variant

    quantized_variant(QUANTIZED / "int8_sq_kv_int8" / "tp1_pp1", tmp_path / "q")
    model = load(tmp_path / "q", reconcile(load_config(tmp_path / "q"), tmp_path / "q"))
    assert model.transformer.blocks()[0].attention.dense.input_quant.prequant is not None
    same_steps_either_side(model, 6, 2, [0])
    same_steps_either_side(model, 6, 2, [0, 3])
