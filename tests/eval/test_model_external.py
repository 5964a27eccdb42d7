"""The torch backend against references not produced by our converter's HF path or by transformers alone:
Megatron-core's own logits (rope scaling llama3/linear, partial rotary, learned positions), NVIDIA ModelOpt's
TensorRT-LLM exports (parallel embedding, local pp layer numbering), transformers with rope scaling, and the
interleaved (GPT-J) rotary against its definition."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("ckpt_convert")

from safetensors.torch import load_file  # noqa: E402

from ckpt_convert.cli import main as convert  # noqa: E402
from ckpt_eval.model import Rotary  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckptfmt import CheckpointConfig, model_spec  # noqa: E402
from tests.eval.test_model_parity import (  # noqa: E402
    FP16_TOL,
    FP32_TOL,
    Models,
    assert_matches_reference,
    prompts,
    reference,
    rel_err,
    run_ours,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MEGATRON = FIXTURES / "megatron"
MODELOPT = FIXTURES / "modelopt"


def context_logits(ckpt, ids: torch.Tensor) -> torch.Tensor:
    out = ModelRunner.from_dir(ckpt, device="cpu").generate([ids], return_dict=True, output_context_logits=True)
    return out["context_logits"][0]


# source dir -> hyper-parameters and logits of the Megatron fixture
MEGATRON_CASES = {
    "llama_scaled_tp1": ("llama_scaled", "llama_scaled"),  # rope_scaling llama3, factor 8
    "llama_interp_tp1": ("llama_interp", "llama_interp"),  # seq_len_interpolation_factor 4 -> linear
    "rope_partial_tp1": ("rope_partial", "rope_partial"),  # LayerNorm, gelu, rotary on half of each head
    "gpt_tp1": ("gpt", "gpt"),  # learned positions, biases, tied output layer
    "llama_tp2": ("llama", "llama"),  # the tp2 save of the llama variant
}


@pytest.mark.parametrize("source", list(MEGATRON_CASES))
def test_megatron_logits(source, tmp_path):
    yaml, logits = MEGATRON_CASES[source]
    out = tmp_path / "ckpt"
    assert (
        convert(
            [
                "nemo",
                "--nemo_ckpt_path",
                str(MEGATRON / source),
                "--model_config",
                str(MEGATRON / f"{yaml}.yaml"),
                "--output_dir",
                str(out),
                "--dtype",
                "float32",
                "--quiet",
            ]
        )
        == 0
    )
    ref = load_file(MEGATRON / f"{logits}_logits.safetensors")
    assert rel_err(context_logits(out, ref["input_ids"][0]), ref["logits"][0]) <= FP32_TOL


@pytest.mark.parametrize("model", ["llama_gqa", "qwen2", "gpt2"])
def test_modelopt_export_matches_transformers(model):
    """ModelOpt writes fp16 with parallel embedding; the HF source is fp32, run here in fp16. GPT-2's config
    claims rotary positions: ckptfmt corrects it from the position table the rank file holds."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(MODELOPT / model / "hf", dtype=torch.float16).eval()
    ids = torch.arange(3, 60)
    with torch.inference_mode():
        ref = hf(ids[None]).logits[0]
    assert rel_err(context_logits(MODELOPT / model / "tp1_pp1", ids), ref) <= FP16_TOL


@pytest.mark.mpi
def test_modelopt_multi_rank_exports_match_single_rank(tmp_path):
    """fp16: tp splits change the summation order, so greedy tokens may part at near-ties; logits may not."""
    from tests.eval.test_mpi import MPIRUN, load, mpirun

    if MPIRUN is None:
        pytest.skip("mpirun not installed")
    dirs = [MODELOPT / m / layout for m in ("llama_gqa", "qwen2") for layout in ("tp2_pp1", "tp1_pp2")]
    proc = mpirun(sys.executable, "-m", "tests.eval.test_mpi", str(tmp_path), *map(str, dirs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for d in dirs:
        single = run_ours(ModelRunner.from_dir(d.parent / "tp1_pp1", device="cpu"), prompts())
        ranks = [load(tmp_path, d, rank) for rank in (0, 1)]
        assert torch.equal(ranks[0]["output_ids"], ranks[1]["output_ids"]), d
        assert rel_err(ranks[0]["context_logits"], single["context_logits"]) <= FP16_TOL, d
        if d.name == "tp1_pp2":  # no split matmuls: the same arithmetic as one rank
            assert torch.equal(ranks[0]["output_ids"], single["output_ids"]), d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("eval-rope-models"))


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 500000.0,
        },
    ],
    ids=["linear", "llama3"],
)
def test_rope_scaling_matches_transformers(models, tmp_path, rope):
    from tests.tiny_models import convert_tiny, make_tiny_hf

    hf_dir = make_tiny_hf("llama-gqa", tmp_path / "hf", rope_parameters=rope)
    ckpt = convert_tiny("llama-gqa", tmp_path / "ckpt", hf_dir=hf_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    batch = prompts()
    ours = run_ours(ModelRunner.from_dir(ckpt, device="cpu"), batch)
    assert_matches_reference(ours, reference(hf, batch), batch, FP32_TOL)


@pytest.mark.parametrize("rotary_pct", [1.0, 0.5])
def test_interleaved_rotary_is_rotate_half_on_even_odd_channels(rotary_pct):
    """GPT-J rotary rotates pairs (2i, 2i+1); NeoX rotates (i, i + d/2). Reordering the channels as
    evens-then-odds turns one into the other, so both must agree through that permutation."""
    base = {
        "architecture": "LlamaForCausalLM",
        "dtype": "float32",
        "vocab_size": 10,
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "hidden_act": "silu",
        "rotary_pct": rotary_pct,
    }
    neox = Rotary(model_spec(CheckpointConfig.from_dict({**base, "position_embedding_type": "rope_gpt_neox"})))
    gptj = Rotary(model_spec(CheckpointConfig.from_dict({**base, "position_embedding_type": "rope_gptj"})))
    dim = neox.dim
    x = torch.randn(2, 5, 4, 16)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    order = torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2), torch.arange(dim, 16)])
    turned = gptj.rotate(x, *gptj.cos_sin(positions, x.dtype))
    expected = neox.rotate(x[..., order], *neox.cos_sin(positions, x.dtype))
    assert torch.allclose(turned[..., order], expected, atol=1e-6)
    assert torch.equal(turned[..., dim:], x[..., dim:])  # partial rotary leaves the rest alone
    assert not torch.allclose(turned, x)
