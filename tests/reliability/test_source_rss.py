"""Peak memory of converting torch-pickle sources stays at a few tensors above the interpreter's own (torch
imported), not at the size of the file: tensors are read with ``preadv``, never through a memory map whose touched
pages count as resident. Measured from /proc (VmHWM) of the real console script."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.fixtures.nemo.make_nemo1 import megatron_state
from tests.reliability.helpers import CONSOLE
from tests.rss import run_watching_rss

torch = pytest.importorskip("torch")

HIDDEN, FFN, VOCAB, LAYERS = 512, 1024, 1024, 40  # about 420 MB of fp32 in 2 MB and 1 MB tensors
BOUND = 96 << 20  # above the interpreter with torch imported: a few tensors, queues and allocator slack


def _llama(layers: int) -> dict:
    g = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}."
        state |= {p + n: torch.ones(HIDDEN) for n in ("input_layernorm.weight", "post_attention_layernorm.weight")}
        state |= {p + f"self_attn.{n}_proj.weight": torch.randn(HIDDEN, HIDDEN, generator=g) for n in "qkvo"}
        state |= {p + f"mlp.{n}_proj.weight": torch.randn(FFN, HIDDEN, generator=g) for n in ("gate", "up")}
        state[p + "mlp.down_proj.weight"] = torch.randn(HIDDEN, FFN, generator=g)
    return state | {"model.norm.weight": torch.ones(HIDDEN), "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=g)}


@pytest.fixture(scope="module")
def big_bin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rss") / "llama"
    path.mkdir()
    torch.save(_llama(LAYERS), path / "pytorch_model.bin")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **{"vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS},
        **{"num_attention_heads": 8, "num_key_value_heads": 8, "hidden_act": "silu", "rms_norm_eps": 1e-5},
        **{"max_position_embeddings": 128, "tie_word_embeddings": False, "torch_dtype": "float32"},
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def big_nemo(big_bin) -> Path:
    """The same weights in Megatron-core naming, as an uncompressed NeMo 1 archive."""
    hf = torch.load(big_bin / "pytorch_model.bin", weights_only=True, mmap=True)
    shape = {"num_layers": LAYERS, "hidden_size": HIDDEN, "num_attention_heads": 8, "num_query_groups": 8}
    state = megatron_state(hf, shape)
    work = big_bin.parent / "nemo"
    work.mkdir()
    torch.save(state, work / "model_weights.ckpt")
    hparams = shape | {"ffn_hidden_size": FFN}
    hparams |= {"normalization": "rmsnorm", "activation": "swiglu", "bias": False, "position_embedding_type": "rope"}
    (work / "model_config.yaml").write_text(yaml.safe_dump(hparams | {"max_position_embeddings": 128}))
    with tarfile.open(big_bin.parent / "model.nemo", "w") as tar:
        for name in ("model_config.yaml", "model_weights.ckpt"):
            tar.add(work / name, f"./{name}")
    return big_bin.parent / "model.nemo"


def _baseline() -> int:
    """Peak RSS of an interpreter that imports what the converter imports for these sources (torch included)."""
    code = "import torch, yaml, ckptfmt, ckpt_convert.cli, ckpt_convert.hf, ckpt_convert.nemo"
    done, peak = run_watching_rss([sys.executable, "-c", code], period=0.02, timeout=120)
    assert done.returncode == 0, done.stderr
    return peak


@pytest.mark.parametrize("kind", ["hf", "nemo"])
def test_peak_rss_is_a_few_tensors_not_the_file(kind, big_bin, big_nemo, tmp_path):
    source = big_bin if kind == "hf" else big_nemo
    weights = big_bin / "pytorch_model.bin"
    flag = "--model_dir" if kind == "hf" else "--nemo_ckpt_path"
    cmd = [CONSOLE, kind, flag, str(source), "--output_dir", str(tmp_path / "out"), "--quiet"]
    done, peak = run_watching_rss(cmd, period=0.02, timeout=300)
    assert done.returncode == 0, done.stderr
    base, size = _baseline(), weights.stat().st_size
    print(f"{kind}: peak RSS {peak / 2**20:.0f} MB, interpreter {base / 2**20:.0f} MB, file {size / 2**20:.0f} MB")
    assert peak - base < BOUND < size, f"peak RSS {peak / 2**20:.0f} MB, interpreter {base / 2**20:.0f} MB"
