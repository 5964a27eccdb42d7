"""Every architecture x dtype x (tp, pp): merged rank files equal the HF tensors, and the output validates."""

from __future__ import annotations

import pytest

from ckptfmt import load_config
from ckptfmt.validate import validate_checkpoint
from tests.convert.conftest import PARALLEL, TINY_CONFIGS, as_dtype, assert_same, convert_tiny
from tests.convert.merge import merged_tensors


def check_exact(ckpt, expected: dict, dtype: str) -> None:
    problems, warnings = validate_checkpoint(ckpt)
    assert problems == [] and warnings == []
    merged = merged_tensors(ckpt)
    assert sorted(merged) == sorted(expected)
    for name, tensor in expected.items():
        assert_same(merged[name], as_dtype(tensor, dtype), name)


@pytest.mark.parametrize("tp,pp", PARALLEL)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_merged_rank_files_equal_hf_tensors(name, dtype, tp, pp, tiny_hf, reference, tmp_path):
    hf = tiny_hf(name)
    ckpt = convert_tiny(name, tmp_path / "ckpt", tp=tp, pp=pp, dtype=dtype, hf_dir=hf)
    config = load_config(ckpt)
    assert (config.dtype, config.mapping.tp_size, config.mapping.pp_size) == (dtype, tp, pp)
    check_exact(ckpt, reference(hf), dtype)


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "opt-postnorm-proj", "falcon-new"])
def test_parallel_embedding(name, dim, tiny_hf, reference, tmp_path):
    hf = tiny_hf(name)
    ckpt = convert_tiny(
        name, tmp_path / "ckpt", tp=2, pp=2, hf_dir=hf, use_parallel_embedding=True, embedding_sharding_dim=dim
    )
    config = load_config(ckpt)
    assert config.use_parallel_embedding and config.embedding_sharding_dim == dim
    check_exact(ckpt, reference(hf), "float32")


@pytest.mark.parametrize("name,tp", [("llama-tied", 1), ("llama-tied", 2), ("gpt2", 2), ("opt", 1)])
def test_embedding_sharing_omits_lm_head(name, tp, tiny_hf, reference, tmp_path):
    hf = tiny_hf(name)
    ckpt = convert_tiny(
        name, tmp_path / "ckpt", tp=tp, hf_dir=hf, use_parallel_embedding=True, use_embedding_sharing=True
    )
    assert load_config(ckpt).share_embedding_table
    expected = dict(reference(hf))
    del expected["lm_head.weight"]
    check_exact(ckpt, expected, "float32")


def test_embedding_sharing_refused_for_untied_model(tiny_hf, reference, tmp_path, capsys):
    hf = tiny_hf("llama-gqa")
    ckpt = convert_tiny("llama-gqa", tmp_path / "ckpt", hf_dir=hf, use_embedding_sharing=True)
    assert not load_config(ckpt).share_embedding_table
    check_exact(ckpt, reference(hf), "float32")


@pytest.mark.parametrize("source_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["llama-gqa", "gptneox", "falcon-old"])
def test_auto_dtype_keeps_source_bytes(name, source_dtype, tiny_hf, reference, tmp_path):
    hf = tiny_hf(name, dtype=source_dtype)
    ckpt = convert_tiny(name, tmp_path / "ckpt", tp=2, dtype="auto", hf_dir=hf)
    assert load_config(ckpt).dtype == source_dtype
    check_exact(ckpt, reference(hf), source_dtype)


def test_falcon_rw_layout(tiny_hf, reference, tmp_path):
    """Old Falcon without multi-query (qkv per head), sequential attention/MLP, biases, ALiBi."""
    hf = tiny_hf("falcon-old", multi_query=False, parallel_attn=False, bias=True, alibi=True)
    ckpt = convert_tiny("falcon-old", tmp_path / "ckpt", tp=2, pp=2, hf_dir=hf)
    config = load_config(ckpt)
    assert config.position_embedding_type == "alibi" and config.kv_heads == 4
    check_exact(ckpt, reference(hf), "float32")


@pytest.mark.parametrize("name", ["llama-gqa", "llama-tied", "falcon-new", "falcon-old", "mistral"])
def test_more_ranks_than_kv_heads(name, tiny_hf, reference, tmp_path):
    """tp 4 with 2 or 1 KV heads: KV heads are replicated; merging still gives the HF tensors."""
    hf = tiny_hf(name)
    ckpt = convert_tiny(name, tmp_path / "ckpt", tp=4, pp=2, hf_dir=hf, use_parallel_embedding=True)
    check_exact(ckpt, reference(hf), "float32")


@pytest.mark.parametrize(
    "flags,expected",
    [
        ({"world_size": 2}, (2, 1)),
        ({"world_size": 4, "tp_size": 2}, (2, 2)),
        ({"world_size": 2, "pp_size": 2}, (1, 2)),
        ({"tp_size": 2, "pp_size": 2}, (2, 2)),
        ({}, (1, 1)),
    ],
)
def test_world_size_flags(flags, expected):
    import argparse

    from ckpt_convert.options import parallel_sizes

    args = argparse.Namespace(**{"world_size": None, "tp_size": None, "pp_size": None, **flags})
    assert parallel_sizes(args) == expected
