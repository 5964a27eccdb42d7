"""Weight-only int8/int4, per channel and per group: config flags set, dequantized weights close to the source."""

from __future__ import annotations

import numpy as np
import pytest

from ckptfmt import load_config
from ckptfmt.names import model_spec
from ckptfmt.quant import QMAX, dequantize_weight_only, unpack_int4
from ckptfmt.validate import validate_checkpoint
from tests.convert.conftest import as_dtype, assert_same, convert_tiny, run_cli
from tests.convert.merge import merged_tensors

LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")


def quantized_flags(precision: str, group: int | None) -> dict:
    flags = {"use_weight_only": True, "weight_only_precision": precision}
    return {**flags, "per_group": True, "group_size": group} if group else flags


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("group", [None, 32])
@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "falcon-new"])
def test_dequantized_weights_close_to_source(name, precision, group, tp, pp, tiny_hf, reference, tmp_path):
    hf = tiny_hf(name)
    ckpt = convert_tiny(
        name, tmp_path / "ckpt", tp=tp, pp=pp, dtype="float32", hf_dir=hf, **quantized_flags(precision, group)
    )
    assert validate_checkpoint(ckpt) == ([], [])
    config = load_config(ckpt)
    q = config.quantization
    assert (q.use_weight_only, q.weight_only_precision, q.per_group) == (True, precision, bool(group))
    if group:
        assert q.group_size == group
    merged, expected = merged_tensors(ckpt), reference(hf)
    quantized = 0
    for name_, weight in expected.items():
        base = name_.removesuffix(".weight")
        if not (name_.endswith(".weight") and base.split(".", 3)[-1] in LINEARS):
            assert_same(merged[name_], as_dtype(weight, "float32"), name_)  # everything else is exact
            continue
        qweight, scale = merged[name_], merged[base + ".per_channel_scale"]
        values = unpack_int4(qweight) if precision == "int4" else qweight
        assert qweight.dtype == np.int8 and values.min() >= -QMAX[precision] - 1 and values.max() <= QMAX[precision]
        restored = dequantize_weight_only(qweight, scale, precision, group)
        assert restored.shape == weight.shape
        error = np.abs(restored - weight.astype(np.float32))
        assert error.max() <= 0.5 * float(scale.max()) * 1.001, name_  # half a quantization step
        assert error.max() < 0.1 * np.abs(weight).max(), name_
        quantized += 1
    assert quantized == model_spec(config).num_layers * (5 if name == "llama-gqa" else 4)


def test_group_size_must_divide_inputs(tiny_hf, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc, _, err = run_cli(
        "hf",
        "--model_dir",
        tiny_hf("llama-gqa"),
        "--output_dir",
        out,
        "--use_weight_only",
        "--per_group",
        "--group_size",
        "48",
        capsys=capsys,
    )
    assert rc == 1 and err.startswith("error: --group_size 48") and err.count("\n") == 1
    assert not out.exists()
