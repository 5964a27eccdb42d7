"""Decode tokens/s of ckpt_eval's torch backend vs transformers' ``generate``, and the memory-bandwidth bound.

    python bench/eval_decode.py [--device cuda] [--preset 1b] [--compile] [--json out.json]

Self-contained: builds a random LLaMA-shaped model (fp16 on cuda) with transformers (TinyLlama-1.1B shape for ``1b``),
writes the same weights as a checkpoint with ckptfmt's streaming writer (no converter), then times, at each
batch size, ``generate`` of 1 and of N new tokens for both systems: decode tokens/s = batch * (N - 1) /
(t_N - t_1), so prefill is excluded. Both run greedy with a fixed output length (no end token).

The bound: every decode step reads all weights once (lm_head included, the input embedding not), so batch-1
decode cannot beat bandwidth / weight bytes; bandwidth is measured here with a large device-to-device copy.
Targets (issue 5, H100): ours >= 3x transformers at batch 1 and >= 60% of the bound (use --compile: the fused
Triton decode step; ``--compile fused reduce-overhead`` compares it with torch.compile).
``--device cpu --preset tiny`` checks the whole path on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ckptfmt import CheckpointConfig, RankFileWriter, atomic_output_dir, expected_tensors, to_numpy, write_manifest

PRESETS = {
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
    ),  # TinyLlama-1.1B
    "150m": dict(
        vocab_size=32000,
        hidden_size=1024,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        intermediate_size=2816,
    ),  # a CPU run of a minute or two
    "tiny": dict(
        vocab_size=32000,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=704,
    ),
}
MAX_POS = 2048


def hf_model(preset: str, device: str, dtype: str):
    """A random LlamaForCausalLM (transformers' own init) of ``dtype`` on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**PRESETS[preset], max_position_embeddings=MAX_POS, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def checkpoint_config(hf) -> CheckpointConfig:
    c = hf.config
    return CheckpointConfig.from_dict(
        {
            "architecture": "LlamaForCausalLM",
            "dtype": str(hf.dtype).removeprefix("torch."),
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "intermediate_size": c.intermediate_size,
            "hidden_act": "silu",
            "norm_epsilon": c.rms_norm_eps,
            "position_embedding_type": "rope_gpt_neox",
            "max_position_embeddings": c.max_position_embeddings,
            "rotary_base": 10000.0,
        }
    ).check()


def hf_tensor(sd: dict, name: str) -> torch.Tensor:
    """Our canonical tensor ``name`` from an HF LLaMA state dict (q/k/v fused)."""
    fixed = {
        "transformer.vocab_embedding.weight": "model.embed_tokens.weight",
        "transformer.ln_f.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    if name in fixed:
        return sd[fixed[name]]
    _, _, i, rest = name.split(".", 3)
    p = f"model.layers.{i}."
    if rest == "attention.qkv.weight":
        return torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
    layer = {
        "attention.dense.weight": "self_attn.o_proj.weight",
        "mlp.fc.weight": "mlp.gate_proj.weight",
        "mlp.gate.weight": "mlp.up_proj.weight",
        "mlp.proj.weight": "mlp.down_proj.weight",
        "input_layernorm.weight": "input_layernorm.weight",
        "post_layernorm.weight": "post_attention_layernorm.weight",
    }
    return sd[p + layer[rest]]


def write_checkpoint(hf, out: Path) -> int:
    """Write the HF model's weights as a tp1 checkpoint, one tensor at a time; returns bytes per decode step."""
    config = checkpoint_config(hf)
    specs = expected_tensors(config, 0)
    read_per_step = 0
    sd = hf.state_dict()
    with atomic_output_dir(out, overwrite=True) as tmp:
        writer = RankFileWriter(tmp / "rank0.safetensors", {n: (config.np_dtype, s.shape) for n, s in specs.items()})
        for name in specs:
            tensor = hf_tensor(sd, name)
            writer.write(name, to_numpy(tensor.cpu()))
            if name != "transformer.vocab_embedding.weight":  # decode looks up batch rows only
                read_per_step += tensor.numel() * tensor.element_size()
        entries = {"rank0.safetensors": writer.close()}
        config.save(tmp)
        write_manifest(tmp, entries)
    return read_per_step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bandwidth(device: str, nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Bytes/s of a large copy (read + write counted)."""
    a = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        b.copy_(a)
    sync(device)
    return 2 * nbytes * iters / (time.perf_counter() - start)


def timed(fn, device: str) -> float:
    """Seconds of ``fn()``, the device synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def generate_times(generate, new_tokens: int, repeats: int, device: str) -> tuple[float, float]:
    """Seconds of ``generate(1)`` (the time to first token) and of ``generate(new_tokens)``, best of ``repeats``
    each, after a warm-up of both (compilation, CUDA graph capture, allocator)."""
    timed(lambda: generate(1), device), timed(lambda: generate(new_tokens), device)
    t1 = min(timed(lambda: generate(1), device) for _ in range(repeats))
    tn = min(timed(lambda: generate(new_tokens), device) for _ in range(repeats))
    return t1, tn


def decode_rate(generate, batch: int, new_tokens: int, repeats: int, device: str) -> float:
    """Decode tokens/s: batch * (N - 1) / (t(N) - t(1)) (``generate_times``)."""
    t1, tn = generate_times(generate, new_tokens, repeats, device)
    return batch * (new_tokens - 1) / (tn - t1)


def prompts(batch: int, length: int, vocab: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(batch)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def run(args) -> dict:
    from ckpt_eval.runner import ModelRunner

    hf = hf_model(args.preset, args.device, args.dtype)
    params = sum(p.numel() for p in hf.parameters())
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        ckpt = Path(work) / "ckpt"
        weight_bytes = write_checkpoint(hf, ckpt)
        systems = {"ours (eager)": ModelRunner.from_dir(ckpt, device=args.device)}
        for mode in args.compile or []:
            systems[f"ours (compile {mode})"] = ModelRunner.from_dir(ckpt, device=args.device, compile=mode)
    bw = bandwidth(args.device)
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "preset": args.preset,
        "dtype": args.dtype,
        "parameters": params,
        "weight_bytes_per_step": weight_bytes,
        "bandwidth_bytes_per_s": bw,
        "bound_tokens_per_s_batch1": bw / weight_bytes,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "tokens_per_s": {},
    }
    for batch in args.batch:
        ids = prompts(batch, args.prompt_len, hf.config.vocab_size, args.device)
        mask = torch.ones_like(ids)
        runs = {
            "transformers generate": lambda n, ids=ids, mask=mask: hf.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
        }
        for label, runner in systems.items():
            runs[label] = lambda n, runner=runner, rows=list(ids): runner.generate(rows, max_new_tokens=n)
        rates = result["tokens_per_s"][batch] = {}
        for label, generate in runs.items():
            try:
                rates[label] = decode_rate(generate, batch, args.new_tokens, args.repeats, args.device)
            except Exception as err:  # report and go on: one failing system must not hide the others' figures
                rates[label] = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"batch {batch} {label}: {rates[label]}", flush=True)
    if args.profile:
        for label, runner in systems.items():
            result.setdefault("profile", {})[label] = profile_decode(runner, label, args)
    result["same_greedy_tokens"] = {}
    result["logits_vs_eager"] = {}
    for label, runner in systems.items():
        try:
            result["same_greedy_tokens"][label] = same_tokens(hf, runner, args)
            if runner is not systems["ours (eager)"]:
                result["logits_vs_eager"][label] = logits_vs_eager(systems["ours (eager)"], runner, args)
        except Exception as err:
            result["same_greedy_tokens"][label] = f"failed: {type(err).__name__}"
    return result


def logits_vs_eager(eager, runner, args, steps: int = 16) -> str:
    """Decode logits of ``runner`` against our eager model along the same greedy path: the largest error
    (relative to the largest logit) while the tokens agree, and where they part, the eager model's margin
    between its top two logits there (a near-tie when it is a rounding-level difference)."""
    rows = list(prompts(1, args.prompt_len, 32000, args.device))
    ref, out = (
        r.generate(rows, max_new_tokens=steps, return_dict=True, output_generation_logits=True) for r in (eager, runner)
    )
    ref_ids = ref["output_ids"][0, 0, args.prompt_len : args.prompt_len + steps]
    ids = out["output_ids"][0, 0, args.prompt_len : args.prompt_len + steps]
    agree = int((ref_ids == ids).long().cumprod(0).sum())
    ref_logits, logits = ref["generation_logits"][0, 0].float(), out["generation_logits"][0, 0].float()
    upto = min(agree + 1, steps)  # step i's logits follow tokens < i: equal inputs through step ``agree``
    err = (
        float(((logits[1:upto] - ref_logits[1:upto]).abs().amax(-1) / ref_logits[1:upto].abs().amax(-1)).max())
        if upto > 1
        else 0.0
    )
    text = f"{agree}/{steps} tokens agree, decode logits max rel. error {err:.1e}"
    if agree < steps:
        top2 = ref_logits[agree].topk(2).values
        scale = float(ref_logits[agree].abs().max())
        text += f"; eager top-2 margin where they part {float(top2[0] - top2[1]):.4f} (logit scale {scale:.2f})"
    return text


def profile_decode(runner, label: str, args, steps: int = 32) -> dict:
    """Kernel time of batch-1 decode: the CUDA kernels a step launches, and how busy the GPU is per step."""
    from torch.profiler import ProfilerActivity, profile

    rows = list(prompts(1, args.prompt_len, 32000, args.device))
    runner.generate(rows, max_new_tokens=steps)  # warm (compiled graphs exist already after the timings)
    sync(args.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        runner.generate(rows, max_new_tokens=steps)
        sync(args.device)
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6  # us -> s
    totals: dict[str, list] = {}
    for e in kernels:
        entry = totals.setdefault(e.name[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += e.device_time
    top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:25]
    print(
        f"profile {label}: {len(kernels) / steps:.0f} kernels per token"
        f", GPU busy {1e3 * busy / steps:.3f} ms of {1e3 * wall / steps:.3f} ms wall per token"
    )
    for name, (count, us) in top:
        print(f"    {us / steps:8.1f} us/token  {count / steps:6.1f}x  {name}")
    return {
        "kernels_per_token": len(kernels) / steps,
        "gpu_busy_ms_per_token": 1e3 * busy / steps,
        "wall_ms_per_token": 1e3 * wall / steps,
        "top": [[name, count / steps, us / steps] for name, (count, us) in top],
    }


def same_tokens(hf, runner, args, steps: int = 16) -> str:
    """How many of the first greedy tokens agree (fp16 random weights: near-ties may part them late)."""
    ids = prompts(1, args.prompt_len, hf.config.vocab_size, args.device)
    ref = hf.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)[0, args.prompt_len :]
    ours = runner.generate(list(ids), max_new_tokens=steps)[0, 0, args.prompt_len : args.prompt_len + steps]
    agree = int((ref.cpu() == ours.cpu()).long().cumprod(0).sum())
    return f"{agree}/{steps}"


def report(r: dict) -> None:
    print(
        f"{r['device']}: {r['preset']} LLaMA, {r['parameters'] / 1e9:.2f}B params {r['dtype']}, "
        f"{r['weight_bytes_per_step'] / 1e9:.2f} GB read per decode step"
    )
    print(
        f"measured bandwidth {r['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s -> batch-1 bound "
        f"{r['bound_tokens_per_s_batch1']:.0f} tokens/s; prompt {r['prompt_len']}, {r['new_tokens']} new tokens"
    )
    for label, agree in r["same_greedy_tokens"].items():
        print(f"greedy tokens {label} vs transformers (batch 1, first 16): {agree} agree")
    for label, text in r.get("logits_vs_eager", {}).items():
        print(f"{label} vs ours (eager): {text}")
    for batch, rates in r["tokens_per_s"].items():
        base = rates["transformers generate"]
        for label, rate in rates.items():
            if isinstance(rate, str):
                print(f"  batch {batch:>2}  {label:<36} {rate}")
                continue
            extra = (
                f"  {rate / base:.2f}x transformers"
                if label != "transformers generate" and not isinstance(base, str)
                else ""
            )
            if batch == 1:
                extra += f"  {100 * rate / r['bound_tokens_per_s_batch1']:.0f}% of bound"
            print(f"  batch {batch:>2}  {label:<36} {rate:9.1f} tokens/s{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=list(PRESETS), help="model shape (default: 1b on cuda, tiny on cpu)")
    ap.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        help="default: float16 on cuda, float32 on cpu (CPU half-precision GEMMs are a slow path)",
    )
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--compile",
        nargs="*",
        metavar="MODE",
        help="also time our compiled decode, once per mode (default: auto = the fused Triton kernels, CUDA graphs; "
        "fused; or torch.compile modes such as reduce-overhead)",
    )
    ap.add_argument("--profile", action="store_true", help="print each system's CUDA kernels per decode token")
    ap.add_argument("--workdir", help="where the temporary checkpoint goes (default: the system temp dir)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    args.preset = args.preset or ("1b" if cuda else "tiny")
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    if args.compile == []:
        args.compile = ["auto"]
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
