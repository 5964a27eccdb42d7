"""Batch-1 decode tokens/s of our compiled decode paths, timed in alternating rounds on one loaded model.

    python bench/decode_rounds.py [--rounds 5] [--new_tokens 128]

The same random fp16 TinyLlama-shaped model as ``eval_decode.py`` (CUDA only). Runners: the fused Triton step
with programmatic dependent launch (what ``--compile`` uses on sm90+), the same without it
(``CKPT_EVAL_PDL=0`` at load), and ``torch.compile(mode="reduce-overhead")``. Each round times every runner
once (``eval_decode.decode_rate``: best of 3), so slow drifts of the machine hit all of them alike; prints
each round and the median, min and max against the memory-bandwidth bound.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from eval_decode import bandwidth, decode_rate, hf_model, prompts, write_checkpoint


def main() -> None:
    from ckpt_eval.runner import ModelRunner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--prompt_len", type=int, default=32)
    args = ap.parse_args()
    hf = hf_model("1b", "cuda", "float16")
    with tempfile.TemporaryDirectory() as work:
        ckpt = Path(work) / "ckpt"
        weight_bytes = write_checkpoint(hf, ckpt)
        del hf
        runners = {"fused, PDL": ModelRunner.from_dir(ckpt, device="cuda", compile="fused")}
        os.environ["CKPT_EVAL_PDL"] = "0"
        runners["fused, no PDL"] = ModelRunner.from_dir(ckpt, device="cuda", compile="fused")
        del os.environ["CKPT_EVAL_PDL"]
        runners["torch.compile reduce-overhead"] = ModelRunner.from_dir(ckpt, device="cuda", compile="reduce-overhead")
    bound = bandwidth("cuda") / weight_bytes
    print(f"batch-1 bound {bound:.0f} tokens/s")
    rows = list(prompts(1, args.prompt_len, 32000, "cuda"))
    rates: dict[str, list[float]] = {label: [] for label in runners}
    for i in range(args.rounds):
        for label, runner in runners.items():
            rate = decode_rate(lambda n, r=runner: r.generate(rows, max_new_tokens=n), 1, args.new_tokens, 3, "cuda")
            rates[label].append(rate)
            print(f"round {i} {label:<30} {rate:7.1f} tokens/s  {100 * rate / bound:5.1f}% of bound", flush=True)
    for label, values in rates.items():
        values.sort()
        median = values[len(values) // 2]
        print(
            f"{label:<30} median {median:7.1f} (min {values[0]:.1f}, max {values[-1]:.1f}) tokens/s, "
            f"median {100 * median / bound:.1f}% of bound"
        )


if __name__ == "__main__":
    main()
