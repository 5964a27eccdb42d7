"""How far apart four valid computations of one FP8 model's logits are (issue 19): the fused step, the torch
backend with native FP8 GEMMs, the same emulated in the model dtype, and float32 compute.

    python bench/fp8_logits.py      # a GPU; ~1 minute

A random fp16 LLaMA of TinyLlama-1.1B shape is quantized to FP8 as ``bench/fused_decode_fp8.py`` does; each
path prefills the same 32 random tokens and is teacher-forced over 6 more. Printed per step: max |a - b| / max |b|
of the logits. An FP8 linear rounds its input to e4m3 (3 fraction bits), so a rounding difference upstream can
move an input by a whole e4m3 step; over 22 layers of a random model these flips add up, and the paths are
compared with each other to tell such spread from an error of one path.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch
from eval_decode import hf_model, prompts, write_checkpoint
from fused_decode_fp8 import native_quant

PROMPT, STEPS = 32, 6


def load(path: Path, native: bool, dtype: str | None = None):
    """The torch backend's model of ``path``: native FP8 GEMMs or emulated, in ``dtype`` (default: the model's)."""
    from ckpt_eval.distributed import init_parallel
    from ckpt_eval.weights import load_model
    from ckptfmt import load_config

    config = load_config(path)
    config = dataclasses.replace(config, dtype=dtype) if dtype else config
    with native_quant(native):
        return load_model(path, config, init_parallel(config.mapping, "cuda")).eval()


@torch.inference_mode()
def step_logits(model, tokens: torch.Tensor, fused: bool) -> torch.Tensor:
    """[STEPS, vocab] float32 logits of the teacher-forced decode steps."""
    from ckpt_eval.fused_decode import FusedDecoder

    step = FusedDecoder(model) if fused else None
    model.setup_cache(1, tokens.shape[1])
    pad = torch.zeros(1, dtype=torch.long, device="cuda")
    model(tokens[:, :PROMPT], torch.arange(PROMPT, device="cuda"), pad, last_only=True)
    out = []
    for i in range(PROMPT, tokens.shape[1]):
        token, slot = tokens[:, i : i + 1], torch.tensor([i], device="cuda")
        logits = step(token, slot, pad) if step is not None else model(token, slot, pad, last_only=True)
        out.append(logits.float().reshape(-1).clone())
    return torch.stack(out)


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device (the native FP8 GEMMs and the compiled fused step)")
    from ckpt_eval.fp8_quantize import quantize_fp8

    with tempfile.TemporaryDirectory() as work:
        fp16, fp8 = Path(work) / "fp16", Path(work) / "fp8"
        hf = hf_model("1b", "cuda", "float16")
        write_checkpoint(hf, fp16)
        vocab = hf.config.vocab_size
        del hf
        quantize_fp8(fp16, fp8, prompts(1, PROMPT, vocab, "cpu"), "cuda")
        tokens = torch.randint(0, vocab, (1, PROMPT + STEPS), generator=torch.Generator().manual_seed(0)).cuda()
        paths = {"emulated fp16": (False, None, False), "fused": (False, None, True),
                 "native fp16": (True, None, False), "float32": (False, "float32", False)}  # fmt: skip
        runs = {}
        for label, (native, dtype, fused) in paths.items():
            model = load(fp8, native, dtype)
            runs[label] = step_logits(model, tokens, fused)
            del model
            torch.cuda.empty_cache()
    print(f"{torch.cuda.get_device_name()}: FP8 TinyLlama-1.1B shape, relative max logits error per decode step")
    for a, b in (("fused", "emulated fp16"), ("native fp16", "emulated fp16"), ("float32", "emulated fp16"),
                 ("fused", "float32"), ("native fp16", "float32")):  # fmt: skip
        err = (runs[a] - runs[b]).abs().amax(-1) / runs[b].abs().amax(-1)
        print(f"{a:>12} vs {b:<14}", " ".join(f"{e:.2e}" for e in err.tolist()))


if __name__ == "__main__":
    main()
