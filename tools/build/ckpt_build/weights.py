"""Weights of one rank, read lazily from its rank file and prepared for the network.

Every array is a view of the memory-mapped rank file unless a transform needs a copy (q rows or q norm
pre-scaled by the attention scale, norm parameters in fp32, a shared embedding split for tensor parallelism).
Arrays stay referenced by the network until the build ends, so their memory is read once and never duplicated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ckptfmt.constants import DTYPES
from ckptfmt.io import RankFileReader
from ckptfmt.names import (
    ACTIVATION_SCALE,
    FC,
    GATE,
    K_NORM,
    KV_CACHE_SCALE,
    LAYER,
    LM_HEAD,
    LN_F,
    POSITION_EMBEDDING,
    PREQUANT_SCALE,
    PROJECT_IN,
    PROJECT_OUT,
    Q_NORM,
    QKV,
    VOCAB_EMBEDDING,
    WEIGHTS_SCALE,
)
from ckptfmt.semantics import rotary_inv_freq
from ckptfmt.sharding import split_padded

from .contract import RankLayout


@dataclass
class QuantizedLinear:
    """ModelOpt's FP8 / INT8 SmoothQuant linear: codes ``dtype`` (fp8, int8), ``weight_scale`` ``[1]`` or
    ``[out]``, the input's per-tensor ``input_scale`` ``[1]``, SmoothQuant's ``prequant`` ``[in]`` (model dtype),
    ``out_scale`` ``[out]`` (model dtype) multiplying the output (qkv: 1/sqrt(head_size) on the q rows);
    ``per_token``: the input scale is each row's own (per-token SmoothQuant), ``input_scale`` unused."""

    dtype: str
    weight_scale: np.ndarray
    input_scale: np.ndarray
    prequant: np.ndarray | None = None
    out_scale: np.ndarray | None = None
    per_token: bool = False


@dataclass
class Linear:
    """A linear layer's tensors: ``weight`` ``[out, in]``, or weight-only ``[in, out(/2)]`` + ``scale``."""

    key: str
    weight: np.ndarray
    bias: np.ndarray | None
    scale: np.ndarray | None = None
    precision: str | None = None  # None | "int8" | "int4"
    group_size: int | None = None
    quantized: QuantizedLinear | None = None  # FP8 / INT8 SmoothQuant: ``weight`` [out, in] holds the codes
    prequant: np.ndarray | None = None  # INT4 AWQ: ``[in]`` (model dtype) multiplying the input

    @property
    def out_features(self) -> int:
        if self.precision is None:
            return self.weight.shape[0]
        return self.weight.shape[1] * (2 if self.precision == "int4" else 1)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1] if self.precision is None else self.weight.shape[0]


class RankWeights:
    """Prepared tensors of one rank, by role (layer indices are local to the pipeline stage)."""

    def __init__(self, reader: RankFileReader, layout: RankLayout):
        self.reader, self.layout = reader, layout
        self.dtype = DTYPES[layout.dtype]
        quant = layout.config.quantization
        self.precision = quant.weight_only
        self.group_size = quant.group_size if quant.per_group else None
        self.codes = {"fp8": "fp8", "int8_sq": "int8"}.get(quant.scheme)  # activation-quantized linears
        self.awq = quant.scheme == "int4_awq"  # ModelOpt's layout, run as weight-only int4 per group
        if self.awq:
            self.precision, self.group_size = "int4", quant.group_size
        self._prescaled: dict[int, Linear] = {}  # q-scaled qkv copies, made once per layer

    def get(self, name: str) -> np.ndarray:
        return self.reader[name]

    def optional(self, name: str) -> np.ndarray | None:
        return self.reader[name] if name in self.reader else None  # noqa: SIM401 (reader.get raises)

    def linear(self, local: int, module: str) -> Linear:
        prefix = LAYER.format(i=local) + module
        bias = self.optional(prefix + ".bias")
        if self.awq:
            lin = self._awq(prefix, bias)
        elif self.precision:
            lin = Linear(
                prefix,
                self.get(prefix + ".weight"),
                bias,
                self.get(prefix + ".per_channel_scale"),
                self.precision,
                self.group_size,
            )
        elif self.codes:
            lin = Linear(prefix, self.get(prefix + ".weight"), bias, quantized=self._quantized(prefix))
        else:
            lin = Linear(prefix, self.get(prefix + ".weight"), bias)
        if module != QKV:
            return lin
        if local not in self._prescaled:
            self._prescaled[local] = self._prescale_q(lin)
        return self._prescaled[local]

    def fc_gate(self, local: int) -> Linear | None:
        """A gated MLP's fc and gate as one ``[2 ffn, in]`` linear (fc rows first) when the rank file stores the
        gate weight right after the fc weight: a view of the file, so TensorRT, which would otherwise concatenate
        the two itself into a copy the size of both, gets one constant. None when not stored that way or
        quantized."""
        if self.precision or self.codes:
            return None
        prefix = LAYER.format(i=local)
        weight = self.reader.stacked([prefix + FC + ".weight", prefix + GATE + ".weight"])
        if weight is None:
            return None
        fc_bias, gate_bias = self.optional(prefix + FC + ".bias"), self.optional(prefix + GATE + ".bias")
        if (fc_bias is None) != (gate_bias is None):
            return None
        bias = None if fc_bias is None else np.concatenate([fc_bias, gate_bias])  # [2 ffn]: small
        return Linear(prefix + "mlp.fc_gate", weight, bias)

    def _prescale_q(self, lin: Linear) -> Linear:
        """Fold attention's scale (``ModelSpec.attention_scale``: 1/sqrt(head_size), or 1/sqrt(query_pre_attn_scalar))
        into the q rows (weight or quant scale, and bias). With per-head q/k norms it goes into q's norm
        instead (``qk_norms``): a norm undoes any scale before it."""
        if self.layout.spec.qk_norm:
            return lin
        factor = self.layout.spec.attention_scale
        q_rows = self.layout.heads * self.layout.spec.head_size

        def scaled(a: np.ndarray, axis: int) -> np.ndarray:
            out = np.array(a, dtype=a.dtype)
            index = [slice(None)] * a.ndim
            index[axis] = slice(0, q_rows)
            out[tuple(index)] = (a[tuple(index)].astype(np.float32) * factor).astype(a.dtype)
            return out

        bias = scaled(lin.bias, 0) if lin.bias is not None else None
        if lin.quantized is not None:  # the codes stay as stored: the q rows of the output are scaled instead
            ones = np.ones(lin.weight.shape[0], dtype=self.dtype)
            quantized = dataclasses.replace(lin.quantized, out_scale=scaled(ones, 0))
            return Linear(lin.key, lin.weight, bias, quantized=quantized)
        if lin.precision:
            assert lin.scale is not None  # weight-only linears carry their scales
            return Linear(
                lin.key,
                lin.weight,
                bias,
                scaled(lin.scale, lin.scale.ndim - 1),
                lin.precision,
                lin.group_size,
                prequant=lin.prequant,
            )
        return Linear(lin.key, scaled(lin.weight, 0), bias)

    def _quantized(self, prefix: str) -> QuantizedLinear:
        assert self.codes is not None
        prequant = self.optional(f"{prefix}.{PREQUANT_SCALE}")
        return QuantizedLinear(
            self.codes,
            np.asarray(self.get(f"{prefix}.{WEIGHTS_SCALE}"), dtype=np.float32).reshape(-1),
            np.asarray(self.get(f"{prefix}.{ACTIVATION_SCALE}"), dtype=np.float32).reshape(-1),
            None if prequant is None else np.asarray(prequant).astype(self.dtype),
            per_token=self.layout.config.quantization.per_token,
        )

    def _awq(self, prefix: str, bias: np.ndarray | None) -> Linear:
        """ModelOpt's INT4 AWQ ``weight[out/2, in]`` (rows 2j, 2j+1 in a byte's low, high nibble) is, transposed
        byte for byte, the weight-only ``[in, out/2]`` packing; its ``[out, in/group]`` float32 scale transposed
        to ``[in/group, out]`` in the model dtype; the pre-quant scale multiplies the input."""
        scale = np.asarray(self.get(f"{prefix}.{WEIGHTS_SCALE}"), dtype=np.float32).T.astype(self.dtype)
        prequant = np.asarray(self.get(f"{prefix}.{PREQUANT_SCALE}")).astype(self.dtype)
        weight = np.ascontiguousarray(np.asarray(self.get(prefix + ".weight")).T)
        return Linear(prefix, weight, bias, np.ascontiguousarray(scale), "int4", self.group_size, prequant=prequant)

    def kv_cache_scale(self, local: int) -> np.ndarray | None:
        """The layer's per-tensor ``[1]`` float32 KV-cache scale (INT8 / FP8 cache), None for a plain cache."""
        if not self.layout.config.quantization.kv_cache:
            return None
        name = LAYER.format(i=local) + f"attention.{KV_CACHE_SCALE}"
        return np.asarray(self.get(name), dtype=np.float32).reshape(-1)

    def norm(self, prefix: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(weight, bias) of a norm, as stored (bias None for RMSNorm)."""
        return self.get(prefix + ".weight"), self.optional(prefix + ".bias")

    def layer_norm(self, local: int, name: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        if name is None:
            raise ValueError("layer_norm: this layer has no such norm")
        return self.norm(LAYER.format(i=local) + name)

    def qk_norms(self, local: int) -> tuple[np.ndarray, np.ndarray]:
        """Weights ``[head_size]`` of the per-head q and k RMSNorms; q's times the attention scale (the rotary
        embedding after it is linear, so this is q pre-scaled, as ``_prescale_q`` does without q/k norms)."""
        prefix = LAYER.format(i=local)
        q, k = self.get(prefix + Q_NORM + ".weight"), self.get(prefix + K_NORM + ".weight")
        scale = np.float32(self.layout.spec.attention_scale)
        return (np.asarray(q).astype(np.float32) * scale).astype(q.dtype), k

    def final_norm(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self.norm(LN_F)

    def vocab_embedding(self) -> np.ndarray:
        return self.get(VOCAB_EMBEDDING)

    def position_embedding(self) -> np.ndarray:
        return self.get(POSITION_EMBEDDING)

    def project_in(self) -> np.ndarray | None:
        return self.optional(PROJECT_IN)

    def project_out(self) -> np.ndarray | None:
        return self.optional(PROJECT_OUT)

    def lm_head(self) -> tuple[np.ndarray, np.ndarray | None]:
        """This rank's vocab rows of the output projection (padded vocab / tp) and its bias."""
        bias = self.optional("lm_head.bias")
        if LM_HEAD in self.reader:
            return self.get(LM_HEAD), bias
        table = self.get(VOCAB_EMBEDDING)  # shared embedding table (pp 1 only)
        layout = self.layout
        if table.shape[0] == layout.padded_vocab // layout.tp_size:  # already vocab-parallel
            return table, bias
        return split_padded(table, layout.tp_size, layout.tp_rank), bias


def rope_tables(layout: RankLayout, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin ``[max_seq_len, rotary_dim / 2]`` of global layer ``layer`` (its base and scaling: Gemma 3's local
    layers have their own) in the model dtype, computed in fp32 like transformers."""
    spec = layout.spec
    base, scaling = spec.layer_rotary(layer)
    inv_freq = rotary_inv_freq(spec.rotary_dim, base, scaling)
    positions = np.arange(layout.build.max_seq_len, dtype=np.float32)
    angles = np.outer(positions, inv_freq).astype(np.float32)
    dt = DTYPES[layout.dtype]
    return np.cos(angles).astype(dt), np.sin(angles).astype(dt)
