"""``Ops`` lowered to TensorRT layers (works with ``tensorrt`` and ``tensorrt_rtx_bindings``).

Weights become constants pointing at the caller's numpy buffers (TensorRT does not copy them): every
array is kept referenced here until the build ends. Every layer call is checked: TensorRT often logs an
error and returns None instead of raising.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from ckptfmt.engine import IoTensor

from .ops import Tensor


class TrtBuildError(RuntimeError):
    """TensorRT refused a layer or the build; the message carries TensorRT's own error."""


class TrtOps:
    def __init__(self, trt, network, profile, dims: dict[str, list[int]], logger):
        self.trt, self.net, self.profile, self.dims, self.logger = trt, network, profile, dims, logger
        self.keep_alive: list[np.ndarray] = []
        self._dtypes = {
            "float32": trt.float32,
            "float16": trt.float16,
            "bfloat16": trt.bfloat16,
            "int32": trt.int32,
            "int64": trt.int64,
            "int8": trt.int8,
            "int4": trt.int4,
            "fp8": trt.fp8,
            "bool": trt.bool,
        }
        self._constants: dict[str, Tensor] = {}
        self._scopes: list[str] = []
        self._layers = 0

    # ---- helpers ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _check(self, layer, what: str):
        """``layer`` or the TensorRT error; names the layer ``scope/what#n`` and its outputs ``...:i`` (unique)."""
        if layer is None:
            raise TrtBuildError(f"TensorRT rejected {what}: {self.logger.last_error() or 'no reason logged'}")
        layer.name = "/".join([*self._scopes, f"{what}#{self._layers}"])
        self._layers += 1
        for i in range(layer.num_outputs):
            layer.get_output(i).name = f"{layer.name}:{i}"
        return layer

    def _out(self, layer, what: str) -> Tensor:
        return self._check(layer, what).get_output(0)

    def _weights(self, array: np.ndarray, dtype: str, count: int):
        array = np.ascontiguousarray(array)
        self.keep_alive.append(array)
        return self.trt.Weights(self._dtypes[dtype], array.ctypes.data, count)

    # ---- I/O --------------------------------------------------------------------------------------
    def input(self, spec: IoTensor) -> Tensor:
        shape = [-1 if isinstance(d, str) else d for d in spec.shape]
        t = self.net.add_input(spec.name, self._dtypes[spec.dtype], shape)
        if t is None:
            raise TrtBuildError(f"TensorRT rejected input {spec.name}: {self.logger.last_error()}")
        if any(isinstance(d, str) for d in spec.shape):
            lo = [self.dims[d][0] if isinstance(d, str) else d for d in spec.shape]
            hi = [self.dims[d][1] if isinstance(d, str) else d for d in spec.shape]
            self.profile.set_shape(spec.name, lo, hi, hi)
        return t

    def output(self, spec: IoTensor, x: Tensor) -> None:
        x.name = spec.name
        self.net.mark_output(x)
        if x.dtype != self._dtypes[spec.dtype]:
            raise TrtBuildError(f"output {spec.name}: dtype {x.dtype}, contract says {spec.dtype}")

    # ---- constants --------------------------------------------------------------------------------
    def constant(
        self, key: str, array: np.ndarray, dtype: str | None = None, shape: tuple[int, ...] | None = None
    ) -> Tensor:
        if key in self._constants:
            return self._constants[key]
        dtype = dtype or _dtype_name(array.dtype)
        shape = tuple(shape or array.shape)
        count = int(np.prod(shape, dtype=np.int64))
        t = self._out(self.net.add_constant(shape, self._weights(array, dtype, count)), key)
        self._constants[key] = t
        return t

    def scalar(self, value, dtype: str, rank: int) -> Tensor:
        np_dtype = np.dtype(_NUMPY[dtype])
        return self._out(
            self.net.add_constant((1,) * rank, self._weights(np.full((1,) * rank, value, np_dtype), dtype, 1)),
            f"scalar({value})",
        )

    # ---- math -------------------------------------------------------------------------------------
    def matmul(self, a, b, transpose_b: bool = False):
        op = self.trt.MatrixOperation
        return self._out(
            self.net.add_matrix_multiply(a, op.NONE, b, op.TRANSPOSE if transpose_b else op.NONE), "matmul"
        )

    def _elementwise(self, a, b, op: str):
        return self._out(self.net.add_elementwise(a, b, self.trt.ElementWiseOperation.__members__[op]), op.lower())

    def add(self, a, b):
        return self._elementwise(a, b, "SUM")

    def sub(self, a, b):
        return self._elementwise(a, b, "SUB")

    def mul(self, a, b):
        return self._elementwise(a, b, "PROD")

    def div(self, a, b):
        return self._elementwise(a, b, "DIV")

    def less(self, a, b):
        return self._elementwise(a, b, "LESS")

    def logical_and(self, a, b):
        return self._elementwise(a, b, "AND")

    def where(self, cond, a, b):
        return self._out(self.net.add_select(cond, a, b), "select")

    def sqrt(self, x):
        return self._out(self.net.add_unary(x, self.trt.UnaryOperation.SQRT), "sqrt")

    def unary(self, x, op: str):
        return self._out(self.net.add_unary(x, self.trt.UnaryOperation.__members__[op.upper()]), op)

    def maximum(self, a, b):
        return self._elementwise(a, b, "MAX")

    def minimum(self, a, b):
        return self._elementwise(a, b, "MIN")

    def reduce_mean_last(self, x):
        axes = 1 << (len(x.shape) - 1)
        return self._out(self.net.add_reduce(x, self.trt.ReduceOperation.AVG, axes, True), "reduce_mean")

    def reduce_max_last(self, x):
        axes = 1 << (len(x.shape) - 1)
        return self._out(self.net.add_reduce(x, self.trt.ReduceOperation.MAX, axes, True), "reduce_max")

    def activation(self, x, kind: str):
        act = {"relu": "RELU", "gelu_erf": "GELU_ERF", "gelu_tanh": "GELU_TANH", "sigmoid": "SIGMOID", "tanh": "TANH"}
        return self._out(self.net.add_activation(x, self.trt.ActivationType.__members__[act[kind]]), kind)

    def softmax_last(self, x):
        layer = self._check(self.net.add_softmax(x), "softmax")
        layer.axes = 1 << (len(x.shape) - 1)
        return layer.get_output(0)

    def layer_norm(self, x, weight, bias, eps: float):
        layer = self._check(self.net.add_normalization_v2(x, weight, bias, 1 << (len(x.shape) - 1)), "layer_norm")
        layer.epsilon = eps
        return layer.get_output(0)

    def cast(self, x, dtype: str):
        return self._out(self.net.add_cast(x, self._dtypes[dtype]), f"cast_{dtype}")

    # ---- shapes -----------------------------------------------------------------------------------
    def reshape(self, x, dims):
        layer = self._check(self.net.add_shuffle(x), "reshape")
        layer.reshape_dims = tuple(dims)
        return layer.get_output(0)

    def transpose(self, x, perm):
        layer = self._check(self.net.add_shuffle(x), "transpose")
        layer.first_transpose = tuple(perm)
        return layer.get_output(0)

    def slice_last(self, x, start: int, size: int):
        rank = len(x.shape)
        shape = self._out(self.net.add_shape(x), "shape")
        lead = self._out(self.net.add_slice(shape, (0,), (rank - 1,), (1,)), "shape_slice")
        last = self.constant(f"_size_{size}", np.array([size], dtype=np.int64))
        size_t = self._out(self.net.add_concatenation([lead, last]), "shape_concat")
        layer = self._check(self.net.add_slice(x, (0,) * (rank - 1) + (start,), (1,) * rank, (1,) * rank), "slice")
        layer.set_input(2, size_t)
        return layer.get_output(0)

    def gather(self, table, indices, axis: int):
        return self._out(self.net.add_gather(table, indices, axis), "gather")

    def gather_batched(self, x, indices):
        layer = self._check(self.net.add_gather(x, indices, 1), "batched_gather")
        layer.num_elementwise_dims = 1
        return layer.get_output(0)

    # ---- LLM layers -------------------------------------------------------------------------------
    def rope(self, x, cos, sin, positions, interleaved: bool, rotary_dim: int):
        layer = self._check(self.net.add_rotary_embedding(x, cos, sin, interleaved, rotary_dim), "rope")
        layer.set_input(3, positions)
        return layer.get_output(0)

    def attention(self, q, k, v, mask):
        trt = self.trt
        layer = self._check(
            self.net.add_attention_v2(q, k, v, trt.AttentionNormalizationOp.SOFTMAX, trt.CausalMaskKind.NONE),
            "attention",
        )
        layer.mask = mask
        layer.decomposable = True
        return layer.get_output(0)

    def kv_cache_update(self, cache, update, write_index):
        return self._out(
            self.net.add_kv_cache_update(cache, update, write_index, self.trt.KVCacheMode.LINEAR), "kv_cache_update"
        )

    def dequantize(self, q, scale, dtype: str, axis: int | None = None):
        layer = self._check(self.net.add_dequantize(q, scale, self._dtypes[dtype]), "dequantize")
        if axis is not None:
            layer.axis = axis
        return layer.get_output(0)

    def quantize(self, x, scale, dtype: str):
        return self._out(self.net.add_quantize(x, scale, self._dtypes[dtype]), f"quantize_{dtype}")

    def _collective(self, x, op: str):
        trt = self.trt
        reduce = trt.ReduceOperation.SUM if op == "ALL_REDUCE" else trt.ReduceOperation.NONE
        layer = self._check(
            self.net.add_dist_collective(x, trt.CollectiveOperation.__members__[op], reduce, -1, None), op.lower()
        )
        return layer

    def all_reduce(self, x):
        return self._collective(x, "ALL_REDUCE").get_output(0)

    def all_gather(self, x):
        layer = self._collective(x, "ALL_GATHER")
        layer.num_ranks = self.tp_size
        return layer.get_output(0)

    tp_size = 1


_NUMPY = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "int64": np.int64,
    "int8": np.int8,
    "bool": np.bool_,
}


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.name == "bfloat16":
        return "bfloat16"
    names = {np.dtype(v): k for k, v in _NUMPY.items()}
    return names[np.dtype(dtype)]


def _init_bf16() -> None:
    import ml_dtypes

    _NUMPY["bfloat16"] = ml_dtypes.bfloat16


_init_bf16()
