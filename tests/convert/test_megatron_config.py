"""Megatron / NeMo hyper-parameter spellings: the documented YAML reads as written, a missing field says what to set."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_convert.megatron_config import read_model
from ckptfmt import RankFileReader
from tests.convert.conftest import run_cli

yaml = pytest.importorskip("yaml")
pytest.importorskip("torch")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MCORE = FIXTURES / "megatron" / "llama_tp1"
LLAMA_YAML = FIXTURES / "megatron" / "llama.yaml"
NEMO1 = FIXTURES / "nemo" / "llama_tp1.nemo"
BASE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4}


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ({"activation": "swiglu"}, ("silu", True)),  # NeMo 1
        ({"activation": "fast-swiglu"}, ("silu", True)),
        ({"activation_func": "silu", "gated_linear_unit": True}, ("silu", True)),  # docs/convert-nemo.md
        ({"activation_func": "torch.nn.functional.silu", "gated_linear_unit": True}, ("silu", True)),
        ({"activation_func": {"_target_": "torch.nn.functional.silu"}, "gated_linear_unit": True}, ("silu", True)),
        ({"activation_func": "gelu", "gated_linear_unit": True}, ("gelu", True)),
        ({"activation_func": "silu"}, ("silu", False)),
        ({"activation_func": "gelu"}, ("gelu", False)),
        ({}, ("gelu", False)),  # Megatron-core's default
    ],
)
def test_activation_spellings(spelling, expected):
    model = read_model({**BASE, **spelling}, "h.yaml")
    assert (model.activation, model.gated) == expected


def test_documented_megatron_yaml_converts_as_llama(tmp_path, capsys):
    """``activation_func: silu`` + ``gated_linear_unit: true`` gives the same checkpoint as ``activation: swiglu``."""
    hparams = yaml.safe_load(LLAMA_YAML.read_text())
    assert hparams.pop("activation") == "swiglu"
    documented = tmp_path / "documented.yaml"
    documented.write_text(yaml.safe_dump({**hparams, "activation_func": "silu", "gated_linear_unit": True}))
    outputs = []
    for name, config in (("swiglu", LLAMA_YAML), ("documented", documented)):
        out = tmp_path / name
        argv = ["nemo", "--nemo_ckpt_path", MCORE, "--model_config", config, "--output_dir", out, "--quiet"]
        rc, _, err = run_cli(*argv, capsys=capsys)
        assert rc == 0, err
        outputs.append(out)
    assert (outputs[0] / "config.json").read_text() == (outputs[1] / "config.json").read_text()
    assert '"hidden_act": "silu"' in (outputs[1] / "config.json").read_text()
    a, b = (RankFileReader(o / "rank0.safetensors") for o in outputs)
    assert a.entries == b.entries


def test_missing_position_embedding_type_says_to_set_rope(tmp_path, capsys):
    hparams = yaml.safe_load(LLAMA_YAML.read_text())
    del hparams["position_embedding_type"]
    config = tmp_path / "h.yaml"
    config.write_text(yaml.safe_dump(hparams))
    out = tmp_path / "out"
    argv = ["nemo", "--nemo_ckpt_path", MCORE, "--model_config", config, "--output_dir", out, "--quiet"]
    rc, _, err = run_cli(*argv, capsys=capsys)
    assert rc == 1 and err.count("\n") == 1 and not out.exists(), err
    assert "no position_embedding_type (Megatron's default is learned_absolute)" in err
    assert "set position_embedding_type: rope" in err


def test_quick_gelu_is_refused_not_computed_as_tanh_gelu():
    """x * sigmoid(1.702 x) is not the tanh GELU (they differ by up to ~0.02): no executor has it, so it is refused."""
    from ckptfmt import CheckpointError

    with pytest.raises(CheckpointError, match="quick_gelu"):
        read_model({**BASE, "activation": "quick_gelu"}, "h.yaml")
