"""Quantized checkpoints in the torch backend against NVIDIA ModelOpt's own fake-quant forward of the same model.

Per mode, the tiny LLaMA of tests/fixtures/modelopt_quantized is quantized by ModelOpt (``mtq.quantize`` with the
shipped calibration text, as ``ckpt-convert hf --qformat`` runs it) and exported to our checkpoint; the float32
ModelOpt model's forward is the reference, the checkpoint runs in the torch backend with float32 compute.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization", reason="needs the quant extra (nvidia-modelopt)")
pytest.importorskip("ckpt_convert")

from ckpt_eval.distributed import init_parallel  # noqa: E402
from ckpt_eval.quantized import FP8_MAX, INT8_MAX, fake_quant, per_token_scale  # noqa: E402
from ckpt_eval.weights import load_model  # noqa: E402
from ckptfmt import RankFileReader, load_config  # noqa: E402
from ckptfmt.reconcile import reconcile  # noqa: E402
from tests.convert.test_modelopt_quantize import ROOT, parsed  # noqa: E402

MODEL = ROOT / "llama_gqa" / "hf"
PROMPT = list(b"Checkpoints are converted, built and evaluated; ")
STEPS = 32
MODES = ["fp8", "fp8_kv_fp8", "int8_sq", "int8_sq_kv_int8", "int4_awq", "int4_awq_kv_fp8"]
# max |ours - ModelOpt| / max |ModelOpt| over every position's logits of PROMPT; measured 0.6e-7 (FP8) to 2.3e-7
# (INT4 AWQ): float32 rounding (docs/eval.md)
TOL = 1e-5
KV_BOUND = {"FP8": FP8_MAX, "INT8": INT8_MAX}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """mode -> (ModelOpt's calibrated float32 model, our checkpoint of it), made once per mode."""
    from ckpt_convert import quantize as q

    made: dict[str, tuple] = {}

    def make(mode: str):
        if mode not in made:
            out = tmp_path_factory.mktemp(mode) / "ckpt"
            flags = ["--awq_block_size", "32"] if mode.startswith("int4_awq") else []
            args = parsed(MODEL, out, mode, *flags)
            config, decoder, samples = q.preflight(MODEL, args)
            model = q.quantized_model(MODEL, args, samples)
            q.export_and_import(copy.deepcopy(model), MODEL, config, decoder, args)
            made[mode] = (model.eval(), out)
        return made[mode]

    return make


def ours(path: Path):
    """The checkpoint in the torch backend, float32 compute (its float16 tensors upcast exactly)."""
    config = dataclasses.replace(reconcile(load_config(path), path), dtype="float32")
    return load_model(path, config, init_parallel(config.mapping, "cpu"))


def as_exported(model, path: Path) -> None:
    """Make ModelOpt's model compute what its TensorRT-LLM export wrote, with ModelOpt's own functions and values.

    The export fuses q/k/v (and, for FP8, gate/up) into one linear: ModelOpt's ``preprocess_linear_fusion`` (the
    step the export runs on its copy) re-smooths them to their mean pre-quant scale, requantizes the weights and
    takes the largest per-tensor scales; the pre-quant scales are stored in float16. ModelOpt quantizes k and v with
    each one's own amax; the export writes their maximum as the ``kv_cache_scaling_factor`` TensorRT-LLM reads
    (FP8: clamped to at least 1), so the reference quantizes with that scale."""
    from modelopt.torch.export.quant_utils import preprocess_linear_fusion

    quant = load_config(path).quantization
    algo, fp8 = quant.kv_cache_quant_algo, quant.scheme == "fp8"
    with torch.no_grad(), RankFileReader(path / "rank0.safetensors") as reader:
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            preprocess_linear_fusion([attn.q_proj, attn.k_proj, attn.v_proj])
            if fp8:  # the export fuses gate and up for FP8 only (TensorRT-LLM merges them then)
                preprocess_linear_fusion([mlp.gate_proj, mlp.up_proj])
            for linear in (*(getattr(attn, f"{n}_proj") for n in "qkvo"), mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                quantizer = linear.input_quantizer
                if quantizer.pre_quant_scale is not None:
                    quantizer.pre_quant_scale = quantizer.pre_quant_scale.half().float()
            if algo is None:
                continue
            scale = float(np.asarray(reader[f"transformer.layers.{i}.attention.kv_cache_scaling_factor"])[0])
            for quantizer in (attn.k_bmm_quantizer, attn.v_bmm_quantizer):
                assert quantizer.is_enabled
                quantizer.amax = torch.tensor(scale * KV_BOUND[algo])


@torch.inference_mode()
def greedy_reference(model, steps: int) -> tuple[torch.Tensor, list[int]]:
    """ModelOpt's logits of PROMPT and its greedy tokens (the whole sequence re-run each step: static scales make
    that the same as a cache)."""
    ids = list(PROMPT)
    first = model(torch.tensor([ids])).logits[0].float()
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return first, ids[len(PROMPT) :]


@torch.inference_mode()
def greedy_ours(model, steps: int) -> tuple[torch.Tensor, list[int]]:
    """Our logits of PROMPT (prefill) and greedy tokens, decoding one token a step through the (quantized) cache."""
    n = len(PROMPT)
    model.setup_cache(1, n + steps)
    pad = torch.tensor([0])
    first = model(torch.tensor([PROMPT]), torch.arange(n), pad)[0]
    tokens = [int(first[-1].argmax())]
    for step in range(steps - 1):
        slot = torch.tensor([n + step])
        tokens.append(int(model(torch.tensor([[tokens[-1]]]), slot, pad, last_only=True)[0, -1].argmax()))
    return first, tokens


@pytest.mark.parametrize("mode", MODES)
def test_matches_modelopt_fake_quant(quantized, mode):
    """Logits within TOL of ModelOpt's fake-quant forward and the same 32 greedy tokens."""
    reference, path = quantized(mode)
    as_exported(reference, path)
    want, want_tokens = greedy_reference(reference, STEPS)
    got, got_tokens = greedy_ours(ours(path), STEPS)
    err = rel_err(got, want)
    print(f"{mode}: max |ours - ModelOpt| / max |ModelOpt| = {err:.2e}")
    assert err <= TOL
    assert got_tokens == want_tokens


def test_fake_quant_is_modelopts():
    """Our per-tensor FP8 / INT8 and per-token INT8 fake quantization equal ModelOpt's own quantizer functions
    (amax = scale x bound; int8 in [-128, 127], narrow_range False as its SmoothQuant and KV presets) to float32
    rounding."""
    from modelopt.torch.quantization import tensor_quant

    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * 3
    scale = torch.tensor([0.011])
    fp8 = tensor_quant.scaled_e4m3_impl(x, scale * FP8_MAX)
    assert torch.allclose(fake_quant(x, scale, "fp8"), fp8, rtol=1e-6, atol=0)
    int8 = tensor_quant.fake_tensor_quant(x, scale * INT8_MAX, None, 8, False, False)
    assert torch.allclose(fake_quant(x, scale, "int8"), int8, rtol=1e-6, atol=1e-7)
    rows = per_token_scale(x)
    per_token = tensor_quant.fake_tensor_quant(x, x.abs().amax(-1, keepdim=True), None, 8, False, False)
    assert torch.allclose(fake_quant(x, rows, "int8"), per_token, rtol=1e-6, atol=1e-7)
