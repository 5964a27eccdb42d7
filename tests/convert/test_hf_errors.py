"""Bad input: one ``error:`` line naming the file/field/tensor, exit code 1, nothing left at --output_dir."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.convert.conftest import cli_command, run_cli


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_clean_failure(rc: int, err: str, out: Path, *fragments: str) -> None:
    assert rc == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "temp dir left behind"


def convert(model_dir, out, capsys, *extra):
    return run_cli("hf", "--model_dir", model_dir, "--output_dir", out, "--quiet", *extra, capsys=capsys)


def test_missing_config(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa"), tmp_path / "m")
    (model / "config.json").unlink()
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "config.json: missing")


def test_config_not_json(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa"), tmp_path / "m")
    (model / "config.json").write_text("{not json")
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "config.json: not valid JSON")


def test_unsupported_model_type_lists_supported(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa"), tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(
        rc,
        err,
        tmp_path / "out",
        "model_type 'bert' is not supported",
        "falcon, gemma, gemma2, gemma3_text, gpt2, gpt_neox, llama, mistral, opt, qwen2",
    )


def test_missing_config_field(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("gpt2"), tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    del config["n_head"]
    (model / "config.json").write_text(json.dumps(config))
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "config.json: missing field n_head")


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--tp_size", "3"], "mapping.tp_size: must divide num_attention_heads (4)"),
        (["--pp_size", "3"], "mapping.pp_size: 3 stages for only 2 layers"),
        (["--world_size", "4", "--tp_size", "3"], "--world_size 4: must equal --tp_size x --pp_size"),
        (["--tp_size", "0"], "--tp_size: must be >= 1"),
        (["--workers", "0"], "--workers: must be >= 1"),
    ],
)
def test_bad_parallelism(flags, fragment, tiny_hf, tmp_path, capsys):
    rc, _, err = convert(tiny_hf("llama-gqa"), tmp_path / "out", capsys, *flags)
    assert_clean_failure(rc, err, tmp_path / "out", fragment)


def test_missing_shard(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa", fmt="sharded"), tmp_path / "m")
    shard = sorted(model.glob("model-*.safetensors"))[1]
    shard.unlink()
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", f"{shard}: missing (named by the weight index)")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_shard(damage, tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa", fmt="sharded"), tmp_path / "m")
    shard = sorted(model.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100] if damage == "truncate" else os.urandom(len(data)))
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", str(shard))


def test_corrupt_bin(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("gpt2", fmt="bin"), tmp_path / "m")
    (model / "pytorch_model.bin").write_bytes(b"PK\x03\x04 definitely not a zip")
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "pytorch_model.bin: cannot load")


def test_index_names_missing_file(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa", fmt="sharded"), tmp_path / "m")
    index_path = model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors"
    index_path.write_text(json.dumps(index))
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "model-00099-of-00099.safetensors: missing")


def test_index_names_tensor_absent_from_file(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa", fmt="sharded"), tmp_path / "m")
    index_path = model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.layers.0.extra.weight"] = first
    index_path.write_text(json.dumps(index))
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "model.layers.0.extra.weight named by the weight index")


def test_no_weights(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa"), tmp_path / "m")
    (model / "model.safetensors").unlink()
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "no weights found")


def test_model_dir_not_a_directory(tmp_path, capsys):
    rc, _, err = convert(tmp_path / "nope", tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "nope: not a directory")


def test_tensor_shape_not_matching_config(tiny_hf, tmp_path, capsys):
    model = copy_model(tiny_hf("llama-gqa"), tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "model.safetensors", "does not match config.json")


def test_missing_tensor(tiny_hf, tmp_path, capsys):
    from safetensors.numpy import load_file

    model = copy_model(tiny_hf("llama-gqa"), tmp_path / "m")
    tensors = load_file(model / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, model / "model.safetensors")
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(
        rc,
        err,
        tmp_path / "out",
        "tensor model.layers.1.mlp.up_proj.weight missing",
        "transformer.layers.1.mlp.gate.weight",
    )


def test_unknown_tensor_is_not_silently_dropped(tiny_hf, tmp_path, capsys):
    """A Llama with o_proj biases but config saying none: the biases must not vanish."""
    from safetensors.numpy import load_file

    model = copy_model(tiny_hf("llama-gqa"), tmp_path / "m")
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(64, np.float32)
    save_file(tensors, model / "model.safetensors")
    rc, _, err = convert(model, tmp_path / "out", capsys)
    assert_clean_failure(rc, err, tmp_path / "out", "model.layers.0.self_attn.o_proj.bias is not used")


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))


def test_disk_full(tiny_hf, tmp_path):
    """Writes beyond a file-size limit fail like a full disk (EFBIG instead of ENOSPC)."""
    out = tmp_path / "out"
    cmd = [*cli_command(), "hf", "--model_dir", str(tiny_hf("llama-gqa")), "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120)
    assert_clean_failure(proc.returncode, proc.stderr, out, f"writing {out}: File too large")


def test_documented_tensorrt_llm_example(tiny_hf, tmp_path):
    """TensorRT-LLM's OPT example command line, through the installed console script."""
    script = Path(sys.executable).parent / "ckpt-convert"
    model = copy_model(tiny_hf("opt"), tmp_path / "opt-125m")
    out = "./opt/125M/trt_ckpt/fp16/2-gpu/"
    proc = subprocess.run(
        [
            str(script),
            "hf",
            "--model_dir",
            "./opt-125m",
            "--dtype",
            "float16",
            "--world_size",
            "2",
            "--output_dir",
            out,
        ],
        cwd=model.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 rank file(s)" in proc.stdout and proc.stdout.count("\n") == 1  # the summary line, no progress bar
    config = json.loads((tmp_path / out / "config.json").read_text())
    assert config["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}
    assert config["dtype"] == "float16" and config["architecture"] == "OPTForCausalLM"


def test_python_m_entry(tiny_hf, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ckpt_convert.hf",
            "--model_dir",
            str(tiny_hf("gpt2")),
            "--output_dir",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert (out / "manifest.json").exists()


def _run_with_terminal_stderr(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal; returns (exit code, what it wrote there)."""
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # else tqdm sees 0 columns
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # EIO: the terminal closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_only_on_a_terminal(quiet, tiny_hf, tmp_path):
    cmd = [*cli_command(), "hf", "--model_dir", str(tiny_hf("gpt2")), "--output_dir", str(tmp_path / "out")]
    rc, terminal = _run_with_terminal_stderr(cmd + (["--quiet"] if quiet else []))
    assert rc == 0
    assert ("converting" in terminal and "tensor" in terminal) is not quiet, terminal
