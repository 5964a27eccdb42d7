import json
import os
import signal
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from ckptfmt import (
    CheckpointConfig,
    CheckpointError,
    RankFileReader,
    RankFileWriter,
    atomic_output_dir,
    validate_checkpoint,
    write_manifest,
)
from ckptfmt.cli import main as cli_main

from .conftest import llama_dict, random_checkpoint


def test_writer_reader_roundtrip_all_dtypes(tmp_path):
    tensors = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.linspace(-2, 2, 7).astype(ml_dtypes.bfloat16),
        "c": np.arange(-4, 4, dtype=np.int8),
        "d": np.ones((2, 2), np.float16),
        "scalar": np.array(3.5, np.float32),
    }
    w = RankFileWriter(tmp_path / "x.safetensors", {n: (a.dtype, a.shape) for n, a in tensors.items()})
    for n, a in tensors.items():
        w.write(n, a)
    entry = w.close()
    assert entry["size"] == (tmp_path / "x.safetensors").stat().st_size
    r = RankFileReader(tmp_path / "x.safetensors")
    for n, a in tensors.items():
        assert r[n].dtype == a.dtype and np.array_equal(r[n], a)
    # the safetensors library itself reads our files (its numpy API has no bf16: check the others)
    from safetensors import safe_open

    with safe_open(tmp_path / "x.safetensors", framework="numpy") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for n in ("a", "c", "d", "scalar"):
            assert np.array_equal(f.get_tensor(n), tensors[n])


def test_writer_refuses_wrong_order_shape_and_early_close(tmp_path):
    w = RankFileWriter(tmp_path / "x.safetensors", {"a": (np.float32, (2,)), "b": (np.float32, (3,))})
    with pytest.raises(CheckpointError, match="out of order"):
        w.write("b", np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match="declared float32"):
        w.write("a", np.zeros(3, np.float32))
    w.write("a", np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="missing b"):
        w.close()


def test_truncated_and_corrupt_files(tmp_path, llama_ckpt):
    rank0 = llama_ckpt / "rank0.safetensors"
    data = rank0.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        RankFileReader(tmp_path / "trunc.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"0" * 64)
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        RankFileReader(tmp_path / "garbage.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        RankFileReader(tmp_path / "huge.safetensors")


def test_valid_checkpoint_validates(llama_ckpt):
    assert validate_checkpoint(llama_ckpt) == ([], [])
    assert cli_main(["validate", str(llama_ckpt)]) == 0


def _problems(d):
    return "\n".join(validate_checkpoint(d)[0])


def test_missing_rank_file(llama_ckpt):
    os.remove(llama_ckpt / "rank1.safetensors")
    text = _problems(llama_ckpt)
    assert "rank1.safetensors: missing" in text


def test_manifest_checksum_mismatch(llama_ckpt):
    p = llama_ckpt / "rank0.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    assert "rank0.safetensors: sha256 checksum mismatch" in _problems(llama_ckpt)


def test_wrong_shape_and_dtype(tmp_path):
    cfg = CheckpointConfig.from_dict(llama_dict())
    d = random_checkpoint(tmp_path / "c", cfg)
    cfg16 = CheckpointConfig.from_dict(llama_dict(dtype="bfloat16", intermediate_size=80))
    (d / "config.json").write_text(json.dumps(cfg16.to_dict()))
    os.remove(d / "manifest.json")
    text = _problems(d)
    assert "tensor transformer.layers.0.mlp.fc.weight: float16[96, 64], expected bfloat16[80, 64]" in text


def test_unexpected_tensor_is_a_warning(tmp_path):
    cfg = CheckpointConfig.from_dict(llama_dict())
    d = tmp_path / "c"
    random_checkpoint(d, cfg)
    from ckptfmt import save_checkpoint
    from ckptfmt.io import RankFileReader as R

    r = R(d / "rank0.safetensors")
    tensors = {n: np.array(r[n]) for n in r} | {"extra.thing": np.zeros(2, np.float16)}
    save_checkpoint(d, cfg, {0: tensors}, overwrite=True)
    problems, warnings = validate_checkpoint(d)
    assert problems == [] and warnings == ["rank0.safetensors: unexpected tensor extra.thing (ignored)"]


def test_cli_validate_exit_codes(llama_ckpt, tmp_path, capsys):
    (llama_ckpt / "config.json").write_text(json.dumps(llama_dict(tp=2) | {"architecture": "Nope"}))
    assert cli_main(["validate", str(llama_ckpt)]) == 1
    err = capsys.readouterr().err
    assert "architecture: unsupported 'Nope'" in err and "Traceback" not in err
    r = subprocess.run([sys.executable, "-m", "ckptfmt.cli", "validate"], capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run(
        [sys.executable, "-m", "ckptfmt.cli", "validate", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_inspect_json(llama_ckpt, capsys):
    assert cli_main(["inspect", "--json", str(llama_ckpt)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mapping"]["tp_size"] == 2 and len(info["ranks"]) == 2 and info["ranks"][1]["tensors"] > 0


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(final) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(final) as tmp:
        (tmp / "done").write_text("x")
        write_manifest(tmp)
    with pytest.raises(CheckpointError, match="already exists"), atomic_output_dir(final):
        pass
    with atomic_output_dir(final, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["new"]


def test_atomic_dir_cleans_up_on_sigterm(tmp_path):
    code = (
        "import time, sys\nfrom ckptfmt import atomic_output_dir\n"
        f"with atomic_output_dir({str(tmp_path / 'out')!r}) as t:\n"
        "    (t / 'part').write_text('x'); print('ready', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)
    assert p.returncode != 0 and list(tmp_path.iterdir()) == []


def test_background_writer_writes_the_same_file_and_digest(tmp_path):
    from ckptfmt import BackgroundRankFileWriter

    rng = np.random.default_rng(3)
    tensors = {f"t{i}": rng.standard_normal((64, 33)).astype(np.float16) for i in range(5)}
    specs = {n: (a.dtype, a.shape) for n, a in tensors.items()}
    entries = []
    for cls, name in ((RankFileWriter, "plain.safetensors"), (BackgroundRankFileWriter, "bg.safetensors")):
        w = cls(tmp_path / name, specs)
        for n, a in tensors.items():
            w.write(n, a)
        entries.append(w.close())
    assert entries[0] == entries[1]
    assert (tmp_path / "plain.safetensors").read_bytes() == (tmp_path / "bg.safetensors").read_bytes()


def test_config_corrected_from_the_tensors(tmp_path):
    """A position table in the rank file beats a config claiming rotary positions (ModelOpt fallback configs),
    in an explicit step: load_config returns the file as written, reconcile returns the corrected copy."""
    from ckptfmt import load_config
    from ckptfmt.reconcile import reconcile

    d = tmp_path / "c"
    cfg = CheckpointConfig.from_dict(llama_dict(position_embedding_type="learned_absolute"))
    random_checkpoint(d, cfg)
    src = json.loads((d / "config.json").read_text())
    src["position_embedding_type"] = "rope_gpt_neox"
    (d / "config.json").write_text(json.dumps(src))
    os.remove(d / "manifest.json")
    as_written = load_config(d)
    assert as_written.position_embedding_type == "rope_gpt_neox" and as_written.notes == []
    again = reconcile(as_written, d)
    assert again.position_embedding_type == "learned_absolute" and len(again.notes) == 1
    assert as_written.position_embedding_type == "rope_gpt_neox"  # the input is left as read
    problems, warnings = validate_checkpoint(d)
    assert problems == [] and warnings[0] == again.notes[0] and "manifest.json: missing" in warnings[1]


def test_missing_manifest_is_a_warning_or_with_require_manifest_an_error(tmp_path, capsys):
    d = random_checkpoint(tmp_path / "c", CheckpointConfig.from_dict(llama_dict()))
    os.remove(d / "manifest.json")
    assert cli_main(["validate", str(d)]) == 0
    assert "unverified" in capsys.readouterr().err
    assert cli_main(["validate", "--require-manifest", str(d)]) == 1
    assert "manifest.json: missing" in capsys.readouterr().err


def test_stacked_is_one_view_of_adjacent_tensors_else_none(tmp_path):
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    b = np.arange(12, 20, dtype=np.float16).reshape(2, 4)
    other = np.zeros((2, 5), np.float16)
    path = tmp_path / "r.safetensors"
    order = {"a": a, "b": b, "c": other, "d": a.astype(np.float32)}
    writer = RankFileWriter(path, {n: (t.dtype, t.shape) for n, t in order.items()})
    for n, t in order.items():
        writer.write(n, t)
    writer.close()
    with RankFileReader(path) as reader:
        both = reader.stacked(["a", "b"])
        assert np.array_equal(both, np.concatenate([a, b]))
        assert np.shares_memory(both, reader["a"]) and np.shares_memory(both, reader["b"])  # a view, no copy
        assert reader.stacked(["b", "a"]) is None  # stored in the other order
        assert reader.stacked(["b", "c"]) is None  # trailing shapes differ
        assert reader.stacked(["a", "c"]) is None  # not back to back
        assert reader.stacked(["c", "d"]) is None  # dtypes differ
        assert reader.stacked(["a", "missing"]) is None


@pytest.mark.parametrize("bias", [False, True])
def test_gated_mlp_fc_and_gate_weights_are_written_back_to_back(tmp_path, bias):
    """expected_tensors' order is the write order: fc.weight right before gate.weight, biases after the weights."""
    from ckptfmt import expected_tensors

    config = CheckpointConfig.from_dict(llama_dict(bias=bias))
    names = list(expected_tensors(config, 0))
    for i in range(config.num_hidden_layers):
        fc = names.index(f"transformer.layers.{i}.mlp.fc.weight")
        assert names[fc + 1] == f"transformer.layers.{i}.mlp.gate.weight"
    path = random_checkpoint(tmp_path / "ckpt", config)
    with RankFileReader(path / "rank0.safetensors") as reader:
        layer0 = "transformer.layers.0.mlp."
        assert reader.stacked([layer0 + "fc.weight", layer0 + "gate.weight"]) is not None


@pytest.mark.parametrize(
    ("quantization", "named"),
    [
        ({"quant_algo": "FP8"}, "attention.qkv.weight: float16[128, 64], expected float8_e4m3fn[128, 64]"),
        (
            {"use_smooth_quant": True, "per_channel": True, "per_token": True},
            "missing tensor transformer.layers.0.attention.qkv.weights_scaling_factor",
        ),
        ({"kv_cache_quant_algo": "INT8"}, "missing tensor transformer.layers.0.attention.kv_cache_scaling_factor"),
    ],
)
def test_quantized_modes_are_checked_tensor_by_tensor(tmp_path, quantization, named):
    """An unquantized checkpoint whose config claims a quantized mode: each tensor it lacks is named, one line each
    (the modes' tensors: tests/ckptfmt/test_quantized.py)."""
    ckpt = random_checkpoint(tmp_path / "q", CheckpointConfig.from_dict(llama_dict()))
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization"] = quantization
    (ckpt / "config.json").write_text(json.dumps(config))
    problems, _ = validate_checkpoint(ckpt, hash_files=False)
    assert any(named in p for p in problems) and all("\n" not in p for p in problems), problems
