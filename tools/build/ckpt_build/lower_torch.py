"""``Ops`` executed on torch CPU tensors with TensorRT's semantics (see ``ops``), so tests can run the exact
graph an engine gets. Strong typing is enforced like TensorRT's: mixed dtypes in one op raise."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import torch

from ckptfmt.engine import IoTensor
from ckptfmt.quant import unpack_int4

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "int8": torch.int8,
    "fp8": torch.float8_e4m3fn,
    "bool": torch.bool,
}
FP8_MAX = 448.0  # float8_e4m3fn's largest finite value


def from_numpy(array: np.ndarray) -> torch.Tensor:
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


class ThreadGroup:
    """In-process tensor-parallel collectives for ranks running in threads (one ``TorchOps`` per thread)."""

    def __init__(self, size: int):
        self.size = size
        self._barrier = threading.Barrier(size)
        self._slots: list[torch.Tensor | None] = [None] * size

    def _exchange(self, rank: int, x: torch.Tensor) -> list[torch.Tensor]:
        self._slots[rank] = x
        self._barrier.wait()
        parts = [p for p in self._slots if p is not None]
        self._barrier.wait()
        return parts

    def all_reduce(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        parts = self._exchange(rank, x)
        return torch.stack(parts).sum(0).to(x.dtype)

    def all_gather(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._exchange(rank, x), dim=0)


class TorchOps:
    def __init__(self, feed: dict[str, torch.Tensor], group=None, rank: int = 0, constants: dict | None = None):
        self.feed, self.group, self.rank = feed, group, rank
        self.outputs: dict[str, torch.Tensor] = {}
        self.constants = constants if constants is not None else {}  # reused across steps

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        yield  # names matter to TensorRT only

    @staticmethod
    def _same(*xs: torch.Tensor) -> None:
        if len({x.dtype for x in xs}) > 1:
            raise TypeError(f"mixed dtypes {[x.dtype for x in xs]} (TensorRT networks are strongly typed)")

    def input(self, spec: IoTensor) -> torch.Tensor:
        x = self.feed[spec.name]
        if x.dtype != TORCH_DTYPES[spec.dtype] or x.dim() != len(spec.shape):
            raise TypeError(f"input {spec.name}: got {x.dtype}{list(x.shape)}, contract {spec.dtype}{spec.shape}")
        for got, want in zip(x.shape, spec.shape):
            if isinstance(want, int) and got != want:
                raise TypeError(f"input {spec.name}: got shape {list(x.shape)}, contract {spec.shape}")
        return x

    def output(self, spec: IoTensor, x: torch.Tensor) -> None:
        if x.dtype != TORCH_DTYPES[spec.dtype]:
            raise TypeError(f"output {spec.name}: dtype {x.dtype}, contract {spec.dtype}")
        self.outputs[spec.name] = x

    def constant(self, key, array, dtype=None, shape=None):
        if key not in self.constants:
            if dtype == "int4":
                t = torch.from_numpy(unpack_int4(np.asarray(array))).reshape(shape)
            elif dtype == "fp8":  # raw e4m3fn bytes
                t = torch.from_numpy(np.array(array).view(np.uint8)).view(torch.float8_e4m3fn)
                t = t.reshape(shape) if shape else t
            else:
                t = from_numpy(array)
                t = t.reshape(shape) if shape else t
            self.constants[key] = t
        return self.constants[key]

    def scalar(self, value, dtype, rank):
        return torch.full((1,) * rank, value, dtype=TORCH_DTYPES[dtype])

    def matmul(self, a, b, transpose_b=False):
        self._same(a, b)
        return torch.matmul(a, b.transpose(-1, -2) if transpose_b else b)

    def add(self, a, b):
        self._same(a, b)
        return a + b

    def sub(self, a, b):
        self._same(a, b)
        return a - b

    def mul(self, a, b):
        self._same(a, b)
        return a * b

    def div(self, a, b):
        self._same(a, b)
        return a / b

    def less(self, a, b):
        self._same(a, b)
        return a < b

    def logical_and(self, a, b):
        return a & b

    def where(self, cond, a, b):
        self._same(a, b)
        return torch.where(cond, a, b)

    def sqrt(self, x):
        return torch.sqrt(x)

    def unary(self, x, op):
        if op == "abs":
            return x.abs()
        if op == "round":
            return torch.round(x)  # half to even, as TensorRT's ROUND
        raise TypeError(f"unary: unsupported {op}")

    def maximum(self, a, b):
        self._same(a, b)
        return torch.maximum(a, b)

    def minimum(self, a, b):
        self._same(a, b)
        return torch.minimum(a, b)

    def reduce_mean_last(self, x):
        return x.mean(dim=-1, keepdim=True)

    def reduce_max_last(self, x):
        return x.amax(dim=-1, keepdim=True)

    def activation(self, x, kind):
        if kind == "relu":
            return torch.relu(x)
        if kind == "sigmoid":
            return torch.sigmoid(x)
        if kind == "tanh":
            return torch.tanh(x)
        return torch.nn.functional.gelu(x, approximate="tanh" if kind == "gelu_tanh" else "none")

    def softmax_last(self, x):
        return torch.softmax(x, dim=-1)

    def layer_norm(self, x, weight, bias, eps):
        self._same(x, weight, bias)
        return torch.nn.functional.layer_norm(x, x.shape[-1:], weight.reshape(-1), bias.reshape(-1), eps)

    def cast(self, x, dtype):
        return x.to(TORCH_DTYPES[dtype])

    def reshape(self, x, dims):
        return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])

    def transpose(self, x, perm):
        return x.permute(*perm)

    def slice_last(self, x, start, size):
        return x[..., start : start + size]

    def gather(self, table, indices, axis):
        flat = torch.index_select(table, axis, indices.reshape(-1).long())
        return flat.reshape(*table.shape[:axis], *indices.shape, *table.shape[axis + 1 :])

    def gather_batched(self, x, indices):
        return x[torch.arange(x.shape[0]), indices.long()]

    def rope(self, x, cos, sin, positions, interleaved, rotary_dim):
        self._same(x, cos, sin)
        rd = rotary_dim or x.shape[-1]
        c, s = cos[positions.long()].unsqueeze(1), sin[positions.long()].unsqueeze(1)  # [B, 1, S, rd/2]
        rot, rest = x[..., :rd], x[..., rd:]
        if interleaved:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        else:
            x1, x2 = rot[..., : rd // 2], rot[..., rd // 2 :]
            out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        return torch.cat((out, rest), dim=-1)

    def attention(self, q, k, v, mask):
        self._same(q, k, v)
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2))  # q is pre-scaled
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v.float()).to(q.dtype)

    def kv_cache_update(self, cache, update, write_index):
        self._same(cache, update)
        steps = update.shape[2]
        for b, start in enumerate(write_index.tolist()):
            if start < 0 or start + steps > cache.shape[2]:
                raise IndexError(f"KV cache write at {start}..{start + steps} outside max_seq_len {cache.shape[2]}")
            cache[b, :, start : start + steps] = update[b]
        return cache  # aliased: the engine's output is the input buffer

    def dequantize(self, q, scale, dtype, axis=None):
        out_dtype = TORCH_DTYPES[dtype]
        if scale.dtype != out_dtype:
            raise TypeError(f"dequantize: scale {scale.dtype} must match output {out_dtype}")
        if axis is not None:
            shape = [1] * q.dim()
            shape[axis] = -1
            s = scale.reshape(shape)
        else:
            s = scale
            for dim, (n, m) in enumerate(zip(q.shape, scale.shape)):
                if n != m:
                    s = s.repeat_interleave(n // m, dim=dim)
        return (q.to(torch.float32) * s.to(torch.float32)).to(out_dtype)

    def quantize(self, x, scale, dtype):
        self._same(x, scale)
        y = x / scale
        if dtype == "fp8":
            return y.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)  # round to nearest even e4m3
        if dtype == "int8":
            return torch.round(y).clamp(-128, 127).to(torch.int8)  # torch.round: half to even
        raise TypeError(f"quantize: unsupported {dtype}")

    def all_reduce(self, x):
        return x if self.group is None else self.group.all_reduce(self.rank, x)

    def all_gather(self, x):
        return x if self.group is None else self.group.all_gather(self.rank, x)
