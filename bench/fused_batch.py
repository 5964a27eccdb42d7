"""The fused decode step (``ckpt_eval.fused_decode``) at batches 1/8/16 against torch.compile, with % of the bound.

    python bench/fused_batch.py           # GPU: five model shapes, random fp16 weights (over 6 min on an H100:
                                          #   split it with --shapes / --batch)
    python bench/fused_batch.py --tiny    # CPU: tiny shapes, the kernels in triton's interpreter

Per shape, batch and context (the step's position: 32 and 1024 cached tokens): tokens/s of one decode step of
the fused kernels (a CUDA graph per batch; batches > 1 with both GEMM formulations, ``gemm`` "rows" and
"dot"), of ``torch.compile`` reduce-overhead of the same model (``--compile`` shapes only: each batch size is
a compilation), and the bound: weight bytes + KV bytes read per step, over the measured copy bandwidth (read
+ write counted, /work/shared/docs/gpu-facts.md). transformers' static cache + compile on the LLaMA shape:
``bench/eval_decode.py --batch 1 8 16``. Weights are random (N(0, 0.02), norms 1): speed does not depend on
them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

SHAPES = {  # config.json fields of the checkpoint shapes
    "llama-1.1b": dict(architecture="LlamaForCausalLM", vocab_size=32000, hidden_size=2048, num_hidden_layers=22,
                       num_attention_heads=32, num_key_value_heads=4, intermediate_size=5632, hidden_act="silu",
                       position_embedding_type="rope_gpt_neox"),
    "opt-1.3b": dict(architecture="OPTForCausalLM", vocab_size=50272, hidden_size=2048, num_hidden_layers=24,
                     num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192, hidden_act="relu",
                     position_embedding_type="learned_absolute", bias=True),
    "gpt2-xl": dict(architecture="GPTForCausalLM", vocab_size=50257, hidden_size=1600, num_hidden_layers=48,
                    num_attention_heads=25, num_key_value_heads=25, intermediate_size=6400, hidden_act="gelu",
                    position_embedding_type="learned_absolute", bias=True),
    "pythia-1.4b": dict(architecture="GPTNeoXForCausalLM", vocab_size=50304, hidden_size=2048, num_hidden_layers=24,
                        num_attention_heads=16, num_key_value_heads=16, intermediate_size=8192, hidden_act="gelu",
                        position_embedding_type="rope_gpt_neox", rotary_pct=0.25, bias=True),
    # Falcon-7B's layout (one shared norm, attention and MLP in parallel, one KV head, rotary) at ~1.2B
    "falcon-1b": dict(architecture="FalconForCausalLM", vocab_size=65024, hidden_size=2048, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=1, intermediate_size=8192, hidden_act="gelu",
                      position_embedding_type="rope_gpt_neox", parallel_attention=True, bias=False),
}  # fmt: skip
TINY = dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)


def random_model(fields: dict, dtype: str, device: str):
    """A ``model.Transformer`` of ``fields`` with random weights on ``device``."""
    from ckpt_eval.distributed import init_parallel
    from ckpt_eval.model import Rotary, Transformer
    from ckpt_eval.weights import rank_shapes
    from ckptfmt import CheckpointConfig, model_spec

    config = CheckpointConfig.from_dict({"dtype": dtype, "max_position_embeddings": 2048, **fields}).check()
    with torch.device("meta"):
        model = Transformer(model_spec(config), rank_shapes(config, 0), init_parallel(config.mapping, device))
    model = model.to_empty(device=device).to(getattr(torch, dtype))
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = p.dim() == 1 and name.endswith("weight") and ("norm" in name or "ln_f" in name)
            p.fill_(1.0) if norm else p.normal_(0.0, 0.02)
    if model.rotary is not None:  # to_empty left its buffer uninitialized
        model.rotary = Rotary(model.spec).to(device)
    if model.alibi is not None:
        model.alibi = model.alibi.to(device)
    for layer in model.transformer.blocks():
        layer.mlp.fuse()
    return model.eval()


def copy_bandwidth(device: str) -> float:
    """Bytes/s of a large copy, read + write counted."""
    n = (1 << 30) if device == "cuda" else (1 << 26)
    a, b = (
        torch.empty(n // 2, dtype=torch.float16, device=device),
        torch.empty(n // 2, dtype=torch.float16, device=device),
    )
    return 2 * n * 10 / timed(lambda: b.copy_(a), 10, device)


def timed(fn, repeats: int, device: str) -> float:
    """Seconds for ``repeats`` calls of ``fn`` (after a warm-up call: compilation, graph capture)."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def step_bytes(model, batch: int, context: int) -> int:
    """Bytes one step reads: every weight (the embedding tables a row each) and each row's cached keys and values."""
    t = model.transformer
    tables = {t.vocab_embedding.weight.data_ptr()} | (
        {t.position_embedding.weight.data_ptr()} if model.spec.learned_positions else set()
    )
    tables -= {model.lm_head.weight.data_ptr()}  # a tied table is read whole by lm_head
    seen, weights = set(), 0  # by storage: a fused MLP's fc and gate are views of its stacked weight
    for p in model.parameters():
        storage = p.untyped_storage()
        if storage.data_ptr() not in seen and p.data_ptr() not in tables:
            seen.add(storage.data_ptr())
            weights += storage.nbytes()
    a = t.blocks()[0].attention
    kv = 2 * len(t.blocks()) * a.kv_heads * a.head_size * (context + 1) * batch * p.element_size()
    return weights + kv


def bench_shape(name: str, fields: dict, args, bandwidth: float) -> None:
    from ckpt_eval.backends.torch_backend import compile_decode
    from ckpt_eval.fused_decode import FusedDecoder

    model = random_model(fields, args.dtype, args.device)
    max_context = max(args.contexts)
    compiled = compile_decode(model, "reduce-overhead") if name in args.compile and args.device == "cuda" else None
    for batch in args.batch:
        model.setup_cache(batch, max_context + 8)  # one cache per batch: no recompilation across contexts
        for layer in model.transformer.blocks():
            assert layer.attention.kv_cache is not None
            layer.attention.kv_cache.kv.normal_()
        tokens = torch.randint(0, model.spec.vocab_size, (batch, 1), device=args.device)
        pad = torch.zeros(batch, dtype=torch.long, device=args.device)
        gemms = ["rows", "dot"] if batch > 1 else ["rows"]
        systems = {f"fused {g}": FusedDecoder(model, gemm=g) for g in gemms}
        if batch > 1 and args.tuning:  # a candidate of bench/fused_decode.py --batch, beside the launch in use
            systems["fused dot tuned"] = FusedDecoder(model, gemm="dot", batch_tuning=args.tuning)
        if batch > 1 and args.unsplit:  # the launch before split-K (fused_decode.SPLIT_K) beside the one in use
            systems["fused dot unsplit"] = FusedDecoder(model, gemm="dot", split_k=False)
        if batch == 1:
            systems = {"fused": systems["fused rows"]}
        if compiled is not None:
            systems["torch.compile"] = compiled
        for context in args.contexts:
            slot = torch.tensor([context], device=args.device)
            bound = step_bytes(model, batch, context) / bandwidth
            for label, step in systems.items():
                run = lambda step=step, slot=slot, tokens=tokens, pad=pad: step(tokens, slot, pad, last_only=True)  # noqa: E731
                with torch.no_grad():  # the compiled step's CUDA graphs are replayed only without autograd
                    seconds = timed(run, args.repeats, args.device)
                per_step = seconds / args.repeats
                print(
                    f"{name:<12} batch {batch:<2} context {context:<5} {label:<16} {batch / per_step:10.1f} tokens/s"
                    f"  {per_step * 1e3:8.3f} ms/step  {100 * bound / per_step:5.1f} % of the bound"
                    f" ({batch / bound:.0f} tokens/s)"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU: the kernels in triton's interpreter)")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 1024])
    ap.add_argument("--compile", nargs="*", default=["llama-1.1b", "opt-1.3b"], help="shapes timed with torch.compile")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument(
        "--tuning", type=json.loads, default=None, metavar="JSON",
        help='also time the dot form with these launch options, e.g. \'{"BN": 16, "BK": 256, "PREFETCH": false}\'',
    )  # fmt: skip
    ap.add_argument("--unsplit", action="store_true", help="also the tensor-core step without split-K")
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args()
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        if not args.tiny:
            ap.error("without a GPU, pass --tiny (the kernels then run in triton's interpreter)")
        os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported
        args.repeats, args.contexts, args.dtype = 1, [min(c, 64) for c in args.contexts], "float32"
    bandwidth = copy_bandwidth(args.device)
    print(f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}: copy {bandwidth / 1e12:.2f} TB/s")
    for name in args.shapes:
        fields = {**SHAPES[name], **TINY} if args.tiny else SHAPES[name]
        if args.tiny:
            fields["num_key_value_heads"] = min(fields["num_key_value_heads"], 4)
        bench_shape(name, fields, args, bandwidth)


if __name__ == "__main__":
    main()
