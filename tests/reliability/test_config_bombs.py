"""Config bombs: one claimed size must not drive any tool to a huge allocation or a long plan.

A copy of a real-layout checkpoint (or HF model) whose config.json claims a billion layers, a million-wide
hidden size or a huge vocabulary is refused in one line naming the field, with peak RSS measured from /proc and
bounded (<500 MB: the interpreter, numpy and torch imports, nothing from the claim).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ckptfmt import CheckpointConfig
from tests.random_checkpoint import random_checkpoint
from tests.rss import run_watching_rss

BIN = Path(sys.executable).parent
RSS_BOUND = 500 << 20
BOMBS = [
    ("num_hidden_layers", 10**9),
    ("num_hidden_layers", 10**6),
    ("hidden_size", 10**9),
    ("vocab_size", 10**12),
    ("num_attention_heads", 10**7),
    ("intermediate_size", 10**11),
    ("max_position_embeddings", 10**15),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = {
        "architecture": "LlamaForCausalLM",
        "dtype": "float16",
        "vocab_size": 250,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "intermediate_size": 96,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": 128,
    }
    from tests.eval.summarize_helpers import save_tiny_tokenizer

    ckpt = random_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", CheckpointConfig.from_dict(config))
    save_tiny_tokenizer(ckpt / "tokenizer")
    return ckpt


def bomb(src: Path, dst: Path, field: str, value: int) -> Path:
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config[field] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


TOOLS = {
    "validate": lambda ckpt, out: [str(BIN / "ckptfmt"), "validate", str(ckpt)],
    "inspect": lambda ckpt, out: [str(BIN / "ckptfmt"), "inspect", str(ckpt)],
    "build": lambda ckpt, out: [str(BIN / "ckpt-build"), "--checkpoint_dir", str(ckpt), "--output_dir", str(out)],
    "run": lambda ckpt, out: [
        str(BIN / "ckpt-run"),
        "--checkpoint_dir",
        str(ckpt),
        "--tokenizer_dir",
        str(ckpt / "tokenizer"),
        "--input_text",
        "a",
    ],
}


# every bomb through the format's own gate; the layer bombs also through the tools that plan per layer
CASES = [(t, f, v) for t in TOOLS for f, v in BOMBS if t in ("validate", "inspect") or f == "num_hidden_layers"]


@pytest.mark.parametrize(("tool", "field", "value"), CASES, ids=[f"{t}-{f}={v:.0e}" for t, f, v in CASES])
def test_config_bomb_is_refused_with_bounded_memory(checkpoint, tmp_path, tool, field, value):
    ckpt = bomb(checkpoint, tmp_path / "bomb", field, value)
    done, peak = run_watching_rss(TOOLS[tool](ckpt, tmp_path / "out"), period=0.02, timeout=120)
    rc, err = done.returncode, done.stderr
    assert rc == 1 and "Traceback" not in err and field in err, err
    assert peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MB"
    assert not (tmp_path / "out").exists()
