"""What each fused-decode GEMV costs in instructions, without a GPU: the kernels compiled for an H100 (sm90) on
this machine, their machine code (SASS) read back (issues 19, 24).

    python bench/kernel_sass.py [--batch N] [--json out.json] [--dump DIR]

Each GEMV shape of the TinyLlama-1.1B step (qkv, dense, fc+gate, proj) is launched as the step launches it, in
each weight mode: fp16; FP8 e4m3 codes as the step ran them before ("fp8 before": 4 rows a program, every GEMV
quantizing its input in each program), as it runs them now ("fp8": ``gemv_blocks``' rows for codes, dense's
and proj's inputs quantized where they are written, ``fused_decode.producer_quant``), and the same with the
input's e4m3 rounding by the GPU's conversion ("fp8 cast"); weight-only int8, int4 and INT4 AWQ packed codes.
Triton only compiles: a stand-in driver names the target (sm90, the H100) and the launch is skipped; ``nvdisasm``
and ``cuobjdump`` come with triton. Printed per
kernel: registers and spills, the widest weight load (bytes per thread and instruction), global loads of under
4 bytes in the main loop ("narrow": an access the compiler could not vectorize), and the instructions
of its main loop (the loop that streams the weight: its loads carry triton's ``evict_first`` hint) per weight
byte, against the issue budget at the copy bandwidth: an SM issues 4 warp instructions a clock, and at 3.0
TB/s over 132 SMs at 1.98 GHz it receives 11.5 weight bytes a clock, so a loop over 0.35 warp instructions
(11 thread instructions) per byte cannot keep up with the memory even issuing every clock, and in practice
(dependent instructions, no dual issue) the limit comes well before. The ratio column is that share.

This is a static count: it says which kernels spend more instructions per byte than the memory allows and
where (conversion, normalization and input quantization, the multiply-adds), not how fast they run; the GPU
benches (``bench/fused_decode*.py``) measure that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

SHAPES = {"qkv": (2560, 2048, True, False), "dense": (2048, 2048, False, False),
          "fc+gate": (5632, 2048, True, True), "proj": (2048, 5632, False, False)}  # fmt: skip
SM_COUNT, CLOCK_GHZ, COPY_TBS = 132, 1.98, 3.0
BYTES_PER_CLOCK = COPY_TBS * 1e12 / SM_COUNT / (CLOCK_GHZ * 1e9)  # weight bytes an SM receives a clock
BUDGET = 4 * 32 / BYTES_PER_CLOCK  # thread instructions per weight byte an SM can issue at that rate
WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}  # LDG size suffix -> bytes (none: 4)
CLASSES = (  # instruction families, matched on the opcode's first word
    ("fp32", ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "FCHK")),
    ("fp16", ("HFMA2", "HADD2", "HMUL2", "HMNMX2", "HSETP2")),
    ("convert", ("F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "FRND")),
    ("mufu", ("MUFU",)),
    ("load", ("LDG", "LDS", "LDC", "LDSM", "LDGSTS", "ULDC")),
    ("store", ("STG", "STS", "RED", "ATOM", "ATOMG")),
    ("shuffle", ("SHFL",)),
    ("barrier", ("BAR", "BSSY", "BSYNC", "WARPSYNC")),
)


def read_cubin(cubin: bytes, tool: str, *options: str) -> str:
    """What one of triton's CUDA tools (``nvdisasm``, ``cuobjdump``) prints for ``cubin``."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(path), *options, f.name], capture_output=True, text=True, check=True).stdout


class Sm90Target:
    """Stands in for triton's CUDA driver while kernels are compiled: the target is an H100 (sm90); nothing
    is launched (``compile_only``)."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0


@contextlib.contextmanager
def compile_only(launches: list):
    """Every ``kernel[grid](...)`` inside compiles for sm90 and appends (name, grid, compiled kernel) to
    ``launches`` instead of running."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    real_run, before = JITFunction.run, driver._active  # no CUDA driver here: put back what was set

    def run(self, *args, grid, warmup, **kwargs):
        kernel = real_run(self, *args, grid=grid, warmup=True, **kwargs)
        launches.append((self.fn.__name__, tuple(grid), kernel))
        return kernel

    driver.set_active(Sm90Target())
    JITFunction.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        JITFunction.run = real_run  # type: ignore[method-assign]
        driver._active = before


def sass_lines(cubin: bytes) -> list[tuple[int, str]]:
    """(address, instruction) of each instruction, and (-1, label) for each label, in program order."""
    text = read_cubin(cubin, "nvdisasm", "-c")
    out = []
    for line in text.splitlines():
        if m := re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line):
            out.append((int(m.group(1), 16), m.group(2)))
        elif m := re.match(r"(\.L_x_\d+):", line):
            out.append((-1, m.group(1)))
    return out


def resources(cubin: bytes) -> dict:
    """Registers per thread and local memory (spills) from ``cuobjdump -res-usage``."""
    text = read_cubin(cubin, "cuobjdump", "-res-usage")
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if m is None:
        raise SystemExit(f"kernel_sass: no resource line in cuobjdump's output: {text[:200]!r}")
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "local (spills)": int(m.group(4))}


def opcode(instruction: str) -> str:
    """``@!P0 LDG.E.128 R4, [R2.64]`` -> ``LDG.E.128``."""
    words = instruction.split()
    return words[1] if words[0].startswith("@") else words[0]


def load_bytes(op: str) -> int:
    """Bytes per thread of an ``LDG`` opcode."""
    return next((WIDTH[p] for p in op.split(".")[1:] if p in WIDTH), 4)


def main_loop(lines: list[tuple[int, str]]) -> list[str] | None:
    """The instructions of the innermost loop that loads weights (``evict_first``: ``LDG.E.EF``), or None."""
    labels, code = {}, []
    for addr, text in lines:
        if addr < 0:
            labels[text] = len(code)
        else:
            code.append(text)
    loops = []
    for i, text in enumerate(code):
        if (m := re.search(r"BRA\s+`?\(?(\.L_x_\d+)", text)) and labels.get(m.group(1), i + 1) <= i:
            loops.append(code[labels[m.group(1)] : i + 1])
    weighted = [body for body in loops if any(".EF" in opcode(t) and opcode(t).startswith("LDG") for t in body)]
    return min(weighted, key=len) if weighted else None


def classify(body: list[str]) -> dict:
    counts: Counter = Counter()
    for text in body:
        op = opcode(text)
        if op == "NOP":
            continue
        head = op.split(".")[0]
        counts[next((name for name, ops in CLASSES if head in ops), "integer/other")] += 1
    return dict(counts)


def analyse(name: str, grid: tuple, kernel) -> dict:
    lines = sass_lines(kernel.asm["cubin"])
    code = [t for a, t in lines if a >= 0 and opcode(t) != "NOP"]
    weight_loads = [opcode(t) for t in code if opcode(t).startswith("LDG") and ".EF" in opcode(t)]
    md = kernel.metadata
    row = {
        "kernel": name, "grid": list(grid), "warps": md.num_warps, **resources(kernel.asm["cubin"]),
        "shared": md.shared, "instructions": len(code),
        "widest weight load": max((load_bytes(op) for op in weight_loads), default=0),
    }  # fmt: skip
    body = main_loop(lines)
    if body is not None:
        body = [t for t in body if opcode(t) != "NOP"]
        nbytes = sum(load_bytes(opcode(t)) for t in body if opcode(t).startswith("LDG") and ".EF" in opcode(t))
        narrow = sum(opcode(t).startswith("LDG") and load_bytes(opcode(t)) < 4 for t in body)
        row |= {"loop instructions": len(body), "loop weight bytes": nbytes, "loop narrow loads": narrow,
                "classes": classify(body)}  # fmt: skip
        if nbytes:
            row["per byte"] = len(body) / nbytes
            row["of budget"] = row["per byte"] / BUDGET
    return row


def gemv_launches(mode: str, name: str, tuning: dict | None = None, batch: int = 1) -> list:
    """Compile (not run) the step's GEMV of shape ``name`` in weight ``mode`` for ``batch`` rows (the one-row
    kernels, or the batched ones with their split-K rule); returns its analysed launches."""
    from fused_decode_wq import packed_layer

    from ckpt_eval import decode_kernels as dk
    from ckpt_eval.decode_wq_kernels import packed_blocks, packed_gemv, packed_gemv_batch
    from ckpt_eval.fused_decode import batch_gemm, gemv_batch_blocks, gemv_blocks

    n, k, norm, gated = SHAPES[name]
    rows = 2 * n if gated else n
    x, g = torch.zeros(batch, k, dtype=torch.float16), torch.ones(k, dtype=torch.float16)
    y = torch.zeros(batch, n, dtype=torch.float16)
    act, one = "silu" if gated else "none", batch == 1
    launches: list = []
    with compile_only(launches):
        if mode in ("int8", "int4", "int4_awq"):
            packed = [packed_layer(n, k, mode, "cpu") for _ in range(2 if gated else 1)]
            xs_, ys_ = (x[0], y[0]) if one else (x, y)
            common = dict(eps=1e-5, norm=g if norm else None, res=None if norm else ys_, act=act, pdl=True)
            if one:
                packed_gemv(xs_, packed, ys_, **common, blocks=packed_blocks(packed[0]) | (tuning or {}))
            else:
                packed_gemv_batch(xs_, packed, ys_, **common)
            return [analyse(kname, grid, kernel) | {"cubin": kernel.asm["cubin"]} for kname, grid, kernel in launches]
        fp8 = mode.startswith("fp8")
        w = torch.zeros(rows, k, dtype=torch.float8_e4m3fn if fp8 else torch.float16)
        ws, xs = torch.ones(rows), torch.ones(1)
        # the step quantizes dense's and proj's inputs where they are written (fused_decode.producer_quant)
        at_producer = mode != "fp8 before" and name in ("dense", "proj")
        quant = dict(WQ=True, AQ="none" if at_producer else "fp8") if fp8 else {}
        flags = dict(HAS_NORM=norm, HAS_BIAS=False, HAS_RES=not norm, GATED=gated, ACT=act, PDL=True, **quant)
        if one:
            blocks = gemv_blocks(k, fp8 and mode != "fp8 before", gated) | (tuning or {})
            dk.gemv_kernel[(math.ceil(n / blocks["BN"]),)](
                x, g, w, w, y, y, ws, xs, w, n, k, 1e-5, **flags, CAST=mode == "fp8 cast", **blocks, launch_pdl=True
            )
        else:
            dot = batch_gemm("auto", batch)
            blocks = gemv_batch_blocks(n, k, batch, dot) | (tuning or {})
            part = torch.zeros(blocks["SPLIT"] * 2 * blocks["BB"] * n)
            dk.gemv_batch_kernel[(math.ceil(n / blocks["BN"]), blocks["SPLIT"])](
                x, g, w, w, y, y, ws, xs, w, n, k, 1e-5, **flags, B=batch, DOT=dot, PRECISION="tf32", PART=part,
                COUNT=torch.zeros(n, dtype=torch.int32), **blocks, launch_pdl=True,
            )  # fmt: skip
    return [analyse(kname, grid, kernel) | {"cubin": kernel.asm["cubin"]} for kname, grid, kernel in launches]


MODES = ("fp16", "fp8 before", "fp8", "fp8 cast", "int8", "int4", "int4_awq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--dump", type=Path, help="write each kernel's SASS here")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=1, help="rows of the step (2-16: the batched kernels)")
    parser.add_argument(
        "--blocks",
        type=json.loads,
        default=None,
        help="launch options over the step's own (gemv_blocks, gemv_batch_blocks, packed_blocks; JSON: '{\"BN\": 16}')",
    )
    args = parser.parse_args()
    print(f"budget: {BUDGET:.1f} thread instructions per weight byte ({COPY_TBS} TB/s, {SM_COUNT} SMs, "
          f"{CLOCK_GHZ} GHz: {BYTES_PER_CLOCK:.1f} B per SM clock)")  # fmt: skip
    header = "| GEMV | mode | regs | spills | widest load (B) | narrow loads | loop instr | loop bytes | instr/B |"
    header += " of budget | vs fp16 |"
    print(header + "\n|" + " --- |" * (header.count("|") - 1))
    results: dict = {}
    for name in args.shapes:
        for mode in args.modes:
            for i, r in enumerate(gemv_launches(mode, name, args.blocks, args.batch)):
                cubin = r.pop("cubin")
                if args.dump:
                    args.dump.mkdir(parents=True, exist_ok=True)
                    path = args.dump / f"{name}-{mode.replace(' ', '_')}-{i}.sass"
                    path.write_text("\n".join(t for a, t in sass_lines(cubin) if a >= 0) + "\n")
                results.setdefault(name, {})[mode] = r
                base = results[name].get("fp16", {}).get("per byte")
                ratio = f"{r['per byte'] / base:.2f}×" if base and "per byte" in r else ""
                per = f"{r['per byte']:.2f}" if "per byte" in r else "—"
                share = f"{r['of budget']:.0%}" if "of budget" in r else "—"
                print(f"| {name} | {mode} | {r['registers']} | {r['local (spills)']} | {r['widest weight load']} | "
                      f"{r.get('loop narrow loads', '—')} | "
                      f"{r.get('loop instructions', '—')} | {r.get('loop weight bytes', '—')} | {per} | {share} | "
                      f"{ratio} |")  # fmt: skip
                sys.stdout.flush()
    print("\nmain-loop instruction classes:")
    for name, modes in results.items():
        for mode, r in modes.items():
            print(f"  {name:8s} {mode:9s} {r.get('classes')}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
