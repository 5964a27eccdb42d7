"""DeepSpeed and orbax / flax directories are named as such ("not supported yet") instead of "missing config.json"
or "no weights found".

The layouts are the files those frameworks write (DeepSpeed: ``latest``, ``global_step*/mp_rank_00_model_states.pt``,
``zero_pp_rank_*``, ``zero_to_fp32.py``; orbax: ``_CHECKPOINT_METADATA``, ``_METADATA``; flax: ``*.msgpack``), made
here by name with torch.save / json for the contents: neither DeepSpeed nor JAX is installed in this venv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.convert.conftest import run_cli

torch = pytest.importorskip("torch")


def deepspeed_dir(path: Path, with_hf_config: Path | None = None) -> Path:
    """A DeepSpeed ZeRO checkpoint as engine.save_checkpoint lays it out (an HF Trainer one when given a config)."""
    step = path / "global_step10"
    step.mkdir(parents=True)
    (path / "latest").write_text("global_step10")
    torch.save({"module": {"lm_head.weight": torch.zeros(4, 4)}}, step / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, step / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (path / "zero_to_fp32.py").write_text("# DeepSpeed's consolidation script\n")
    if with_hf_config is not None:
        shutil.copy(with_hf_config / "config.json", path / "config.json")
    return path


def orbax_dir(path: Path) -> Path:
    """An orbax CheckpointManager step directory."""
    (path / "default").mkdir(parents=True)
    (path / "_CHECKPOINT_METADATA").write_text(json.dumps({"init_timestamp_nsecs": 0}))
    (path / "default" / "_METADATA").write_text(json.dumps({"tree_metadata": {}}))
    return path


def flax_hf_dir(path: Path, hf: Path) -> Path:
    """A transformers directory holding only flax weights."""
    path.mkdir()
    shutil.copy(hf / "config.json", path / "config.json")
    (path / "flax_model.msgpack").write_bytes(b"\x80")  # msgpack: an empty map
    return path


def convert_fails(source: str, model: Path, tmp_path: Path, capsys) -> str:
    out = tmp_path / "out"
    flag = "--model_dir" if source == "hf" else "--nemo_ckpt_path"
    rc, _, err = run_cli(source, flag, model, "--output_dir", out, "--quiet", capsys=capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


def test_deepspeed_dir_given_to_hf(tmp_path, capsys):
    err = convert_fails("hf", deepspeed_dir(tmp_path / "ds"), tmp_path, capsys)
    assert "ds: not a HuggingFace model directory but a DeepSpeed checkpoint" in err
    assert "not supported yet" in err and "zero_to_fp32.py" in err


def test_hf_trainer_deepspeed_dir_without_weights(tiny_hf, tmp_path, capsys):
    model = deepspeed_dir(tmp_path / "checkpoint-10", with_hf_config=tiny_hf("llama-gqa"))
    err = convert_fails("hf", model, tmp_path, capsys)
    assert "checkpoint-10: no HuggingFace weights, the weights are a DeepSpeed checkpoint" in err


def test_orbax_dir_given_to_hf(tmp_path, capsys):
    err = convert_fails("hf", orbax_dir(tmp_path / "step_100"), tmp_path, capsys)
    assert "step_100: not a HuggingFace model directory but a JAX (orbax / flax) checkpoint" in err
    assert "ckpt-convert jax --checkpoint_dir DIR --model_config HF_CONFIG" in err


def test_flax_weights_in_hf_dir(tiny_hf, tmp_path, capsys):
    err = convert_fails("hf", flax_hf_dir(tmp_path / "m", tiny_hf("gpt2")), tmp_path, capsys)
    assert (
        "no HuggingFace weights, the weights are a JAX (orbax / flax) checkpoint" in err and "--model_config DIR" in err
    )


@pytest.mark.parametrize("make", [deepspeed_dir, orbax_dir], ids=["deepspeed", "orbax"])
def test_foreign_dir_given_to_nemo(make, tmp_path, capsys):
    err = convert_fails("nemo", make(tmp_path / "src"), tmp_path, capsys)
    named = "a DeepSpeed checkpoint" if make is deepspeed_dir else "a JAX (orbax / flax) checkpoint"
    tip = "not supported yet" if make is deepspeed_dir else "ckpt-convert jax"
    assert f"src: not a NeMo or Megatron checkpoint but {named}" in err and tip in err
