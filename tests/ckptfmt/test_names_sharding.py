import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptfmt import CheckpointConfig, expected_tensors, model_spec
from ckptfmt.quant import dequantize_weight_only, pack_int4, quantize_weight_only, unpack_int4
from ckptfmt.sharding import merge_qkv, shard, split_qkv, unshard

from .conftest import OPT_EXAMPLE, llama_dict


def test_llama_gqa_shapes_tp2():
    cfg = CheckpointConfig.from_dict(llama_dict(tp=2))
    e = expected_tensors(cfg, 1)
    # 4 q heads, 2 kv heads, head 16: per rank 2 q + 1 k + 1 v heads
    assert e["transformer.layers.0.attention.qkv.weight"].shape == (64, 64)
    assert e["transformer.layers.0.attention.dense.weight"].shape == (64, 32)
    assert e["transformer.layers.0.mlp.gate.weight"].shape == (48, 64)
    assert e["transformer.layers.0.mlp.proj.weight"].shape == (64, 48)
    assert e["lm_head.weight"].shape == (51, 64)  # vocab 101 padded to 102
    assert e["transformer.vocab_embedding.weight"].shape == (101, 64)  # replicated
    assert "transformer.layers.0.input_layernorm.bias" not in e  # RMSNorm
    assert "transformer.layers.0.attention.qkv.bias" not in e


def test_kv_replication_and_parallel_embedding():
    cfg = CheckpointConfig.from_dict(llama_dict(tp=4, num_key_value_heads=1, use_parallel_embedding=True))
    e = expected_tensors(cfg, 3)
    assert e["transformer.layers.0.attention.qkv.weight"].shape == (16 + 2 * 16, 64)
    assert e["transformer.vocab_embedding.weight"].shape == (26, 64)  # 101 -> 104 / 4


def test_pipeline_local_layer_numbering():
    cfg = CheckpointConfig.from_dict(llama_dict(pp=2))
    first, last = expected_tensors(cfg, 0), expected_tensors(cfg, 1)
    assert "transformer.vocab_embedding.weight" in first and "lm_head.weight" not in first
    assert "transformer.layers.1.attention.qkv.weight" in first  # layers 0, 1
    assert "transformer.layers.1.attention.qkv.weight" not in last  # layer 2 -> local 0
    assert "transformer.layers.0.attention.qkv.weight" in last and "transformer.ln_f.weight" in last


def test_opt_example_tensors():
    cfg = CheckpointConfig.from_dict(OPT_EXAMPLE)
    spec = model_spec(cfg)
    assert spec.learned_positions and spec.bias and not spec.gated_mlp and spec.intermediate_size == 3072
    e = expected_tensors(cfg, 0)
    assert e["transformer.position_embedding.weight"].shape == (2048, 768)
    assert e["transformer.layers.11.attention.dense.bias"].shape == (768,)  # row-parallel bias not split
    assert e["transformer.layers.11.mlp.fc.bias"].shape == (1536,)
    assert e["transformer.ln_f.bias"].shape == (768,)


def test_weight_only_tensors():
    cfg = CheckpointConfig.from_dict(llama_dict(quantization={"quant_algo": "W4A16_AWQ", "group_size": 32}))
    e = expected_tensors(cfg, 0)
    assert (
        e["transformer.layers.0.mlp.fc.weight"].shape == (64, 48)
        and e["transformer.layers.0.mlp.fc.weight"].dtype == "int8"
    )
    assert e["transformer.layers.0.mlp.fc.per_channel_scale"].shape == (2, 96)
    assert e["lm_head.weight"].dtype == "float16"


@settings(max_examples=60, deadline=None)
@given(
    tp=st.sampled_from([1, 2, 4, 8]),
    kv=st.sampled_from([1, 2, 4, 8]),
    group=st.integers(1, 3),
    head=st.sampled_from([2, 4, 6]),
    cols=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_qkv_split_merge_exact(tp, kv, group, head, cols, seed):
    heads = kv * group
    if heads % tp or (kv % tp and tp % kv):
        return
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((n * head, cols)) for n in (heads, kv, kv))
    parts = [split_qkv(q, k, v, heads, kv, tp, r) for r in range(tp)]
    q2, k2, v2 = merge_qkv(parts, heads, kv, head)
    assert np.array_equal(q, q2) and np.array_equal(k, k2) and np.array_equal(v, v2)


@settings(max_examples=60, deadline=None)
@given(
    tp=st.sampled_from([1, 2, 3, 4]),
    vocab=st.integers(1, 40),
    ffn_mult=st.integers(1, 4),
    parallel_embedding=st.booleans(),
    sharding_dim=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_shard_unshard_exact_for_every_tensor(tp, vocab, ffn_mult, parallel_embedding, sharding_dim, seed):
    d = llama_dict(
        tp=tp,
        num_attention_heads=12,
        num_key_value_heads=tp if tp != 3 else 3,
        hidden_size=48,
        intermediate_size=12 * ffn_mult,
        vocab_size=vocab,
        num_hidden_layers=1,
        use_parallel_embedding=parallel_embedding,
        embedding_sharding_dim=sharding_dim,
    )
    cfg = CheckpointConfig.from_dict(d)
    assert cfg.problems() == []
    full_cfg = cfg.with_mapping(1, 1)
    rng = np.random.default_rng(seed)
    for name, spec in expected_tensors(full_cfg, 0).items():
        full = rng.standard_normal(spec.shape).astype(np.float16)
        parts = [shard(name, full, cfg, r) for r in range(tp)]
        for r, p in enumerate(parts):
            assert p.shape == expected_tensors(cfg, r)[name].shape, name
        assert np.array_equal(unshard(name, parts, cfg), full), name


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("group", [None, 16])
def test_weight_only_quant_roundtrip(precision, group):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    q, s = quantize_weight_only(w, precision, group)
    assert q.dtype == np.int8 and q.shape == (64, 48 if precision == "int8" else 24)
    back = dequantize_weight_only(q, s, precision, group)
    err = np.abs(back - w).max() / np.abs(w).max()
    assert err < (0.01 if precision == "int8" else 0.15)
    # requantizing the dequantized weights is exact
    q2, _ = quantize_weight_only(back, precision, group)
    assert np.array_equal(q, q2)


def test_int4_pack_unpack():
    v = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    packed = pack_int4(v)
    assert packed.shape == (2, 4) and (packed.view(np.uint8)[0, 0] & 0xF) == (-8 & 0xF)
    assert np.array_equal(unpack_int4(packed), v)
