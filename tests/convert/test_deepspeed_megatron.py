"""``ckpt-convert deepspeed`` on Megatron-DeepSpeed layouts written by DeepSpeed itself (tests/fixtures/deepspeed,
``make_megatron_deepspeed.py``): legacy names in a nested ``module``, ZeRO 3 at tensor parallel 2, pipeline layers
at tensor parallel 2 and a tied pipeline embedding. The source model's own forward (stored with each fixture) is
the reference for the torch backend's logits; ZeRO-3 ranks are compared with DeepSpeed's ``zero_to_fp32``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.convert.merge import merged_tensors
from tests.convert.test_nemo_convert import FP32_TOL, context_logits, rel_err

from .conftest import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "deepspeed"
IDS = [1, 17, 42, 90, 3, 60, 7, 28, 64, 5, 95]
CASES = ["megds_tp2", "megds_zero3_tp2", "megds_pipe_tp2", "megds_pipe_tied"]


def convert(capsys, name: str, out: Path, *flags: str) -> Path:
    fixture = FIXTURES / name
    argv = ["deepspeed", "--checkpoint_dir", fixture / "ckpt", "--model_config", fixture / "megatron.yaml"]
    code, _, err = run_cli(*argv, "--output_dir", out, "--quiet", "--dtype", "float32", *flags, capsys=capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", CASES)
def test_logits_match_the_source_model(tmp_path, capsys, name):
    """tp 1 output: the torch backend's logits equal the trained model's own forward; the tp 2 output merges back
    to the tp 1 one exactly."""
    from safetensors.numpy import load_file

    ref = load_file(str(FIXTURES / name / "logits.safetensors"))["logits"]
    one = convert(capsys, name, tmp_path / "tp1")
    assert rel_err(context_logits(one, IDS), ref) <= FP32_TOL
    two = convert(capsys, name, tmp_path / "tp2", "--tp_size", "2")
    expected = merged_tensors(one)
    actual = merged_tensors(two)
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(actual[key], value), key


def merge_ranks(name: str, parts: list[np.ndarray]) -> np.ndarray:
    """Megatron's tensor-parallel layout, written out here independently of the converter's tables."""
    if name.endswith(("dense_h_to_4h.weight", "dense_h_to_4h.bias")):  # each rank: [gate rows; up rows]
        halves = [np.split(p, 2) for p in parts]
        return np.concatenate([h[0] for h in halves] + [h[1] for h in halves])
    if name.endswith(
        ("query_key_value.weight", "query_key_value.bias", "word_embeddings.weight", "output_layer.weight")
    ):
        return np.concatenate(parts)
    if name.endswith(("self_attention.dense.weight", "dense_4h_to_h.weight")):
        return np.concatenate(parts, axis=1)
    for p in parts[1:]:
        assert np.array_equal(p, parts[0]), f"{name}: replicated tensor differs between ranks"
    return parts[0]


def test_zero3_tensor_parallel_ranks_equal_zero_to_fp32():
    """Each rank's fp32 masters rebuilt from the ZeRO-3 partitions equal DeepSpeed's own zero_to_fp32 of that rank's
    files, and the merged tensors equal those ranks merged by Megatron's split rules."""
    from safetensors.numpy import load_file

    from ckpt_convert.deepspeed_layout import locate
    from ckpt_convert.deepspeed_megatron import open_megatron
    from ckpt_convert.megatron_names import normalize_name

    fixture = FIXTURES / "megds_zero3_tp2"
    ranks = [load_file(str(fixture / f"expected_fp32_tp{r}.safetensors")) for r in range(2)]
    spec = locate(fixture / "ckpt" / "global_step2", False)
    assert (spec.layout, spec.tp, len(spec.model_files), len(spec.optim_files)) == ("zero3", 2, 4, 4)
    with open_megatron(spec, gated_mlp=True) as source:
        names = {normalize_name(n): n for n in ranks[0]}
        assert sorted(source.names()) == sorted(names)
        for name, legacy in names.items():
            want = merge_ranks(legacy, [r[legacy] for r in ranks])
            got = source.load(name)
            assert got.dtype == np.float32 and np.array_equal(got, want), name
