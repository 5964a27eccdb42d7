"""``ckptfmt reshard``: any tp/pp layout to any other, exactly; A -> B -> A gives back the same bytes, and
A -> B equals converting the source model directly to B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ckptfmt import CheckpointError, RankFileReader, validate_checkpoint
from ckptfmt.reshard import reshard
from tests.build.checkpoints import layout_config
from tests.random_checkpoint import random_checkpoint

LAYOUTS = [(2, 1), (1, 2), (2, 2), (4, 1)]
VARIANTS = {
    "llama-gqa": {},  # 2 kv heads: replicated at tp 4
    "llama-gqa-int4-group": {"quant": "int4", "group_size": 16},
    "gpt2-int8-bf16": {"quant": "int8", "dtype": "bfloat16"},
    "gpt2-parallel-embedding": {"use_parallel_embedding": True, "vocab_size": 251},  # padded vocab rows
    "gpt2-embedding-dim1": {"use_parallel_embedding": True, "embedding_sharding_dim": 1, "dtype": "float32"},
    "falcon-new": {},
    "opt-postnorm-proj": {},
}


def rank_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("rank*.safetensors"))}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_there_and_back_is_byte_identical(tmp_path, variant):
    layout = variant.split("-int")[0].split("-parallel")[0].split("-embedding")[0]
    a = random_checkpoint(tmp_path / "a", layout_config(layout, **VARIANTS[variant]))
    for tp, pp in LAYOUTS:
        b, back = tmp_path / f"b-{tp}x{pp}", tmp_path / f"back-{tp}x{pp}"
        reshard(a, b, tp, pp)
        assert validate_checkpoint(b) == ([], [])
        reshard(b, back, 1, 1)
        assert rank_bytes(back) == rank_bytes(a), f"{variant} via tp {tp} x pp {pp}"
        assert json.loads((back / "config.json").read_text()) == json.loads((a / "config.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("model", "flags"), [("llama-gqa", {}), ("gpt2", {"use_weight_only": True})])
def test_reshard_equals_converting_directly(tmp_path, model, flags):
    from tests.tiny_models import convert_tiny

    hf = tmp_path / f"hf-{model}"
    one = convert_tiny(model, tmp_path / "tp1", hf_dir=hf, **flags)
    direct = convert_tiny(model, tmp_path / "tp2pp2", tp=2, pp=2, hf_dir=hf, **flags)
    resharded = tmp_path / "resharded"
    reshard(one, resharded, 2, 2)
    for name in rank_bytes(direct):
        want, got = RankFileReader(direct / name), RankFileReader(resharded / name)
        assert want.keys() == got.keys()
        for tensor in want:
            np.testing.assert_array_equal(np.asarray(got[tensor]), np.asarray(want[tensor]), err_msg=tensor)
    assert (resharded / "tokenizer").exists() == (direct / "tokenizer").exists()


def test_cli_reshard_and_its_refusals(tmp_path):
    a = random_checkpoint(tmp_path / "a", layout_config("llama-gqa"))
    ckptfmt = str(Path(sys.executable).with_name("ckptfmt"))

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([ckptfmt, "reshard", *argv], capture_output=True, text=True, timeout=120)

    ok = run(str(a), "--tp_size", "2", "--output_dir", str(tmp_path / "b"))
    assert ok.returncode == 0 and "2 rank file(s)" in ok.stdout, ok.stderr
    for argv, says in [
        (["--tp_size", "3"], "tp_size"),  # 4 heads
        (["--pp_size", "3"], "pp_size"),  # 2 layers
        (["--output_dir", str(a)], "input"),
    ]:
        argv = argv if "--output_dir" in argv else [*argv, "--output_dir", str(tmp_path / "c")]
        p = run(str(a), *argv)
        assert p.returncode == 1 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not (tmp_path / "c").exists()
    rank0 = a / "rank0.safetensors"
    data = bytearray(rank0.read_bytes())
    data[-1] ^= 0xFF
    rank0.write_bytes(bytes(data))
    p = run(str(a), "--tp_size", "2", "--output_dir", str(tmp_path / "c"))
    assert p.returncode == 1 and "rank0.safetensors: sha256" in p.stderr and not (tmp_path / "c").exists()


def test_tokenizer_links_are_not_followed(tmp_path):
    a = random_checkpoint(tmp_path / "a", layout_config("llama-gqa"))
    (tmp_path / "secret").write_text("not for the output")
    (a / "tokenizer").mkdir()
    (a / "tokenizer" / "tokenizer.json").write_text("{}")
    os.symlink(tmp_path / "secret", a / "tokenizer" / "special_tokens_map.json")
    reshard(a, tmp_path / "b", 2, 1, verify=False)
    assert sorted(p.name for p in (tmp_path / "b" / "tokenizer").iterdir()) == ["tokenizer.json"]


def test_a_source_missing_a_tensor_is_refused_before_writing(tmp_path):
    from ckptfmt.io import save_checkpoint

    a = random_checkpoint(tmp_path / "a", layout_config("llama-gqa"))
    reader = RankFileReader(a / "rank0.safetensors")
    tensors = {n: np.asarray(reader[n]) for n in reader if n != "transformer.ln_f.weight"}
    save_checkpoint(tmp_path / "broken", layout_config("llama-gqa"), {0: tensors})
    with pytest.raises(CheckpointError, match="missing tensor transformer.ln_f.weight"):
        reshard(tmp_path / "broken", tmp_path / "b", 2, 1)
    assert not (tmp_path / "b").exists()


def test_a_layout_the_quantization_cannot_hold_is_refused(tmp_path):
    a = random_checkpoint(tmp_path / "a", layout_config("llama-gqa", quant="int4", group_size=32))
    with pytest.raises(CheckpointError, match="group_size: 32 does not divide the per-rank input size 16"):
        reshard(a, tmp_path / "b", 4, 1)
