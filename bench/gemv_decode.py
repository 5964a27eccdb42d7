"""How fast can one decode step's GEMVs go on this GPU? TinyLlama-1.1B shapes, batch 1, fp16.

    python bench/gemv_decode.py          # CUDA only (needs triton, which CUDA builds of torch ship)

Times the 22 layers x (qkv, dense, fc+gate, proj) matrix-vector products alone, captured in one CUDA graph
(distinct weights per layer, so nothing stays in L2), three ways: cuBLAS (``F.linear``), inductor's generated
kernel (``torch.compile``, coordinate-descent tuned) and a plain autotuned Triton GEMV; then per shape.
The figure to compare is the weight-read bandwidth each reaches against the device's copy bandwidth: it
bounds what any decode step made of separate kernels can reach (issue 5's 60 % target; docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from eval_decode import bandwidth  # the bound's bandwidth: the same measurement as the decode benchmark

SHAPES = {"qkv": (2560, 2048), "dense": (2048, 2048), "fc_gate": (11264, 2048), "proj": (2048, 5632)}
LAYERS = 22


def triton_gemv_fn():
    """An autotuned Triton GEMV (fp32 accumulation): y[n] = sum_k w[n, k] x[k]."""
    import triton
    import triton.language as tl

    configs = [
        triton.Config({"BN": bn, "BK": bk}, num_warps=nw, num_stages=ns)
        for bn in (2, 4, 8, 16)
        for bk in (128, 256, 512)
        for nw in (2, 4, 8)
        for ns in (2, 3, 4)
    ]

    @triton.autotune(configs=configs, key=["N", "K"])
    @triton.jit
    def kernel(W, X, Y, N, K, BN: tl.constexpr, BK: tl.constexpr):
        rows = tl.program_id(0) * BN + tl.arange(0, BN)
        acc = tl.zeros((BN, BK), tl.float32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            mask = (rows[:, None] < N) & (cols[None, :] < K)
            w = tl.load(W + rows[:, None] * K + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
            x = tl.load(X + cols, mask=cols < K, other=0.0)
            acc += w.to(tl.float32) * x[None, :].to(tl.float32)
        tl.store(Y + rows, tl.sum(acc, 1).to(Y.dtype.element_ty), mask=rows < N)

    def gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, k = w.shape
        y = torch.empty(1, n, device=x.device, dtype=x.dtype)
        kernel[lambda meta: (triton.cdiv(n, meta["BN"]),)](w, x, y, n, k)
        return y

    return gemv


def graph_time_us(fn, repeats: int = 20) -> float:
    """Best of 5 mean replay times of ``fn`` captured as one CUDA graph."""
    fn()
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / repeats)
    return best


def main() -> None:
    import torch._inductor.config as inductor

    inductor.coordinate_descent_tuning = True  # as the torch backend's --compile does
    torch.manual_seed(0)
    weights = {
        n: [torch.randn(s, device="cuda", dtype=torch.float16) * 0.02 for _ in range(LAYERS)] for n, s in SHAPES.items()
    }
    inputs = {n: torch.randn(1, s[1], device="cuda", dtype=torch.float16) for n, s in SHAPES.items()}
    total = sum(w.numel() * w.element_size() for ws in weights.values() for w in ws)
    print(
        f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth('cuda') / 1e12:.2f} TB/s; "
        f"GEMV weights {total / 1e9:.2f} GB"
    )
    systems = {
        "cuBLAS": lambda x, w: F.linear(x, w),
        "inductor": torch.compile(lambda x, w: F.linear(x, w), dynamic=False),
        "triton": triton_gemv_fn(),
    }
    for label, linear in systems.items():
        us = graph_time_us(lambda linear=linear: [linear(inputs[n], w) for n in SHAPES for w in weights[n]])
        print(f"{label:9s} all 22 layers: {us:7.1f} us  {total / (us * 1e-6) / 1e12:5.2f} TB/s")
    for label, linear in systems.items():
        for n in SHAPES:
            us = graph_time_us(lambda n=n, linear=linear: [linear(inputs[n], w) for w in weights[n]]) / LAYERS
            nbytes = weights[n][0].numel() * 2
            print(f"  {label:9s} {n:8s} {us:6.2f} us per call  {nbytes / (us * 1e-6) / 1e12:5.2f} TB/s")


if __name__ == "__main__":
    main()
