"""Every executor computes every model it claims to, and refuses every model it does not (ckptfmt.semantics).

Each variant runs through transformers (where a HuggingFace model of it exists), the torch backend, the
builder's network executed on torch and the fused decode step (in triton's interpreter on CPU). For each
executor the support table decides: supported -> its logits agree with the reference; not supported -> it
refuses, naming the field. ``test_every_table_value_has_a_variant`` keeps the variants complete, so a feature
value cannot enter the table, or an executor, without being run here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported
pytest.importorskip("triton")
pytest.importorskip("ckpt_build")
pytest.importorskip("ckpt_convert")

import importlib  # noqa: E402
import re  # noqa: E402

from ckpt_build.execute import TorchRanks  # noqa: E402
from ckpt_build.limits import Limits  # noqa: E402
from ckpt_eval import decode_kernels  # noqa: E402
from ckpt_eval.distributed import init_parallel  # noqa: E402
from ckpt_eval.fused_decode import FusedDecoder, unsupported  # noqa: E402
from ckpt_eval.weights import load_model  # noqa: E402
from ckptfmt import (  # noqa: E402
    CheckpointConfig,
    CheckpointError,
    RankFileReader,
    load_config,
    model_spec,
    save_checkpoint,
)
from ckptfmt.reconcile import reconcile  # noqa: E402
from ckptfmt.semantics import BUILDER, FEATURES, FUSED, TORCH, support_rows  # noqa: E402
from tests.eval.test_gemma import make_gemma_hf  # noqa: E402
from tests.random_checkpoint import random_checkpoint  # noqa: E402
from tests.tiny_models import TINY_CONFIGS, convert_tiny, make_tiny_hf  # noqa: E402

if not torch.cuda.is_available():
    importlib.reload(decode_kernels)  # decorated under the interpreter even if something imported it before
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROMPT = [5, 17, 99, 3, 42, 7, 200, 11]
LIMITS = Limits(max_batch_size=1, max_input_len=16, max_output_len=16)
TOL = 1e-4  # fp32, max |ours - reference| / max |reference|
FUSED_TOL = 2e-5  # the fused step against the torch backend's own step

# variant -> (tiny_models variant, transformers overrides, converter flags): the reference is transformers
HF_VARIANTS: dict[str, tuple[str, dict, dict]] = {
    **{name: (name, {}, {}) for name in TINY_CONFIGS},
    "falcon-alibi": ("falcon-old", dict(alibi=True, multi_query=False, parallel_attn=False, bias=True), {}),
    "mistral-window-4": ("mistral", dict(sliding_window=4), {}),
    "llama-linear-scaling": ("llama-gqa", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), {}),
    "llama3-scaling": (
        "llama-gqa",
        dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        ),
        {},
    ),
    "llama-int8-weight-only": ("llama-gqa", {}, dict(use_weight_only=True, weight_only_precision="int8")),
}
# variant -> (tests.eval.test_gemma model, transformers overrides): Gemma's features, transformers the reference
# (the torch backend, the builder's graph and the fused step compute all three; prompt 8 > window 4)
GEMMA_VARIANTS: dict[str, tuple[str, dict]] = {
    "gemma": ("gemma", {}),  # embedding x sqrt(hidden), norms stored as 1 + w
    "gemma2-window-4-caps": ("gemma2", dict(sliding_window=4)),  # sandwich norms, caps, query_pre_attn_scalar
    "gemma3-local-rope": ("gemma3", dict(sliding_window=4)),  # q/k norms, local:global layers and rope bases
}
# variant -> config.json overrides of a random checkpoint (no HF model computes it): the reference is the torch
# backend where it computes the model, else nothing is compared and every executor must refuse
BASE = {
    "architecture": "LlamaForCausalLM",
    "dtype": "float32",
    "vocab_size": 250,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "hidden_act": "silu",
    "position_embedding_type": "rope_gpt_neox",
    "max_position_embeddings": 64,
}
GPT = {"architecture": "GPTForCausalLM", "position_embedding_type": "learned_absolute"}
CONFIG_VARIANTS: dict[str, dict] = {
    "rope-gptj-partial": {"position_embedding_type": "rope_gptj", "rotary_pct": 0.5},
    "relu-gated": {"hidden_act": "relu"},
    "gelu-tanh-gated": {"hidden_act": "geglu"},
    "gelu-erf-gated": {"hidden_act": "geglu", "gelu_approximate": "none"},
    "silu-plain": {**GPT, "hidden_act": "silu"},
    "gelu-erf-plain": {**GPT, "hidden_act": "gelu", "gelu_approximate": "none"},
    "alibi-with-scale": {**GPT, "hidden_act": "gelu", "position_embedding_type": "alibi_with_scale"},
    "prompt-tuning": {"use_prompt_tuning": True},
    "residual-multiplier": {"residual_multiplier": 0.5},  # a field no executor computes
    "final-softcapping": {"final_logit_softcapping": 3.0},
    "yarn-scaling": {"rotary_scaling": {"type": "yarn", "factor": 4.0}},
}
# variant -> (ModelOpt export of tests/fixtures/modelopt_quantized/llama_gqa, quantization overrides): quantized
# checkpoints (float32 copies of the float16 exports, ``quantized_variant``); the reference is the torch backend
# (tests/eval/test_quantized.py checks it against ModelOpt's own fake-quant forward)
QUANTIZED = Path(__file__).resolve().parent / "fixtures" / "modelopt_quantized" / "llama_gqa"
FIXTURE_VARIANTS: dict[str, tuple[str, dict]] = {
    "fp8-kv-fp8": ("fp8_kv_fp8", {}),
    "int8-sq-kv-int8": ("int8_sq_kv_int8", {}),
    "int8-sq-per-token": ("int8_sq", {"quant_algo": "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"}),
    "int8-sq-per-tensor": ("int8_sq", {"quant_algo": "W8A8_SQ_PER_TENSOR_PLUGIN"}),  # weights requantized
    "int4-awq": ("int4_awq", {}),
}
VARIANTS = [*HF_VARIANTS, *GEMMA_VARIANTS, *CONFIG_VARIANTS, *FIXTURE_VARIANTS]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


class Variants:
    """Checkpoints (and transformers' logits) of the variants, made once per module."""

    def __init__(self, root):
        self.root = root
        self.cache: dict[str, tuple] = {}

    def get(self, name: str) -> tuple:
        """(checkpoint dir, reference last-token logits of PROMPT or None)."""
        if name not in self.cache:
            path = self.root / name
            if name in HF_VARIANTS:
                base, overrides, flags = HF_VARIANTS[name]
                hf_dir = make_tiny_hf(base, self.root / f"hf-{name}", **overrides)
                convert_tiny(base, path, hf_dir=hf_dir, **flags)
                ref = None
                if not flags:  # a quantized checkpoint computes its dequantized weights, not the source's
                    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
                    with torch.no_grad():
                        ref = model(torch.tensor([PROMPT])).logits[0, -1]
            elif name in GEMMA_VARIANTS:
                base, overrides = GEMMA_VARIANTS[name]
                hf_dir = make_gemma_hf(base, self.root / f"hf-{name}", **overrides)
                convert_tiny(base, path, hf_dir=hf_dir)
                model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
                with torch.no_grad():
                    ref = model(torch.tensor([PROMPT])).logits[0, -1]
            elif name in FIXTURE_VARIANTS:
                mode, overrides = FIXTURE_VARIANTS[name]
                src = self.root / f"src-{name}"
                shutil.copytree(QUANTIZED / mode / "tp1_pp1", src)
                config_json = json.loads((src / "config.json").read_text())
                config_json["quantization"].update(overrides)
                (src / "config.json").write_text(json.dumps(config_json))
                quantized_variant(src, path)
                ref = None
            else:
                config = CheckpointConfig.from_dict({**BASE, **CONFIG_VARIANTS[name]}).check()
                random_checkpoint(path, config, seed=len(name))
                ref = None
            self.cache[name] = (path, ref)
        return self.cache[name]


def quantized_variant(src, path) -> None:
    """Checkpoint ``src`` at ``path`` in float32 (its float16 tensors upcast: the fused step is compared at fp32
    criteria); int8 SmoothQuant weights requantized to one scale a tensor where the config says per tensor."""
    config = load_config(src)
    config.dtype = config.logits_dtype = "float32"  # the export's float16 logits would round the builder's
    with RankFileReader(src / "rank0.safetensors") as reader:
        tensors = {n: np.array(reader[n]) for n in reader.entries}
    tensors = {n: a.astype(np.float32) if a.dtype == np.float16 else a for n, a in tensors.items()}
    per_tensor = config.quantization.scheme == "int8_sq" and not config.quantization.per_channel
    for name in [n for n in tensors if per_tensor and n.endswith(".weights_scaling_factor")]:
        weight = name[: -len("weights_scaling_factor")] + "weight"
        w = tensors[weight].astype(np.float32) * tensors[name][:, None]
        scale = np.float32(np.abs(w).max() / 127)
        tensors[weight] = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        tensors[name] = np.array([scale], dtype=np.float32)
    save_checkpoint(path, config, {0: tensors})


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return Variants(tmp_path_factory.mktemp("parity"))


def table(path) -> dict[str, tuple[str, list[str]]]:
    spec = model_spec(reconcile(load_config(path), path))
    return {field: (value, who) for field, value, who in support_rows(spec)}


def refused_fields(rows: dict, executor: str) -> list[str]:
    return [field for field, (_, who) in rows.items() if executor not in who]


def torch_model(path):
    config = reconcile(load_config(path), path)
    return load_model(path, config, init_parallel(config.mapping, DEVICE)).eval()


@torch.inference_mode()
def torch_logits(model) -> torch.Tensor:
    model.setup_cache(1, len(PROMPT) + 4)
    pad = torch.tensor([0], device=DEVICE)
    tokens = torch.tensor([PROMPT], device=DEVICE)
    return model(tokens, torch.arange(len(PROMPT), device=DEVICE), pad, last_only=True)[0, -1].cpu()


@pytest.mark.parametrize("name", VARIANTS)
def test_executors_agree_or_refuse(variants, name):
    path, ref = variants.get(name)
    rows = table(path)

    # the torch backend: the oracle where transformers has no such model
    refused = refused_fields(rows, TORCH)
    if refused:
        with pytest.raises(CheckpointError, match=refused[0]):
            torch_model(path)
        ours = None
    else:
        model = torch_model(path)
        ours = torch_logits(model)
        if ref is not None:
            assert rel_err(ours, ref) <= TOL, "torch backend vs transformers"
        ref = ours if ref is None else ref

    # the builder's network, executed on torch
    refused = refused_fields(rows, BUILDER)
    if refused:  # the line names one of the fields it does not compute (the window is checked last)
        with pytest.raises(CheckpointError, match="|".join(map(re.escape, refused))):
            TorchRanks(path, LIMITS)
    else:
        tokens, logits = TorchRanks(path, LIMITS).greedy(PROMPT, 1)
        assert ref is not None, "the builder computes a model no reference computes"
        assert rel_err(logits[0][0], ref) <= TOL, "builder graph vs reference"

    # the fused decode step, against the torch backend's own step on the same cache
    refused = refused_fields(rows, FUSED)
    if ours is None:
        return
    reason = unsupported(model)
    if refused:
        assert reason is not None and refused[0] in reason, reason
        return
    assert reason is None, reason
    fused = FusedDecoder(model, cuda_graphs=False)
    pad = torch.tensor([0], device=DEVICE)
    with torch.inference_mode():
        torch_logits(model)  # prefill the shared cache
        for step, token in enumerate((7, 123)):
            slot = torch.tensor([len(PROMPT) + step], device=DEVICE)
            ids = torch.tensor([[token]], device=DEVICE)
            got = fused(ids, slot, pad).clone()
            want = model(ids, slot, pad, last_only=True)
            assert rel_err(got, want) <= FUSED_TOL, f"fused step {step}"


def test_every_table_value_has_a_variant(variants):
    """Every value the support table lists, and every executor's refusal path, is run by some variant."""
    seen: dict[str, set[str]] = {}
    for name in VARIANTS:
        for field, (value, _) in table(variants.get(name)[0]).items():
            seen.setdefault(field, set()).add(value)
    for feature in FEATURES:
        missing = set(feature.support) - seen.get(feature.field, set())
        assert not missing, f"{feature.field}: no variant has {sorted(missing)}"
        if feature.other:  # a number the config sets (a window, a cap): some variant sets one
            assert seen.get(feature.field, set()) - set(feature.support), f"{feature.field}: no variant sets it"
    assert {"none", "W8A16"} <= seen["quantization"]
    everyone = set()
    for name in VARIANTS:
        for _, who in table(variants.get(name)[0]).values():
            everyone |= {TORCH, FUSED, BUILDER} - set(who)
    assert everyone == {TORCH, FUSED, BUILDER}, "some executor's refusal is never exercised"
