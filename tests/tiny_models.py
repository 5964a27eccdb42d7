"""Tiny random HuggingFace models, one per architecture variant, and their conversion.

Shared by the converter, torch-backend and builder tests:

    hf_dir = make_tiny_hf("llama-gqa", tmp / "hf")             # transformers' own from_config + save_pretrained
    ckpt = convert_tiny("llama-gqa", tmp / "ckpt", tp=2, pp=1)  # ckpt-convert hf on it

Every model has 2 layers (so pp 2 works), 4 attention heads (tp 2 works) and a vocab of 250 (not a
multiple of 4: lm_head padding is exercised). All parameters are random, norms included, so a swapped or
mis-mapped tensor shows up in any comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VOCAB = 250
HIDDEN = 64
LAYERS = 2
HEADS = 4
FFN = 128
MAX_POS = 128

# variant -> (transformers config class name, kwargs)
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa": (
        "LlamaConfig",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            max_position_embeddings=MAX_POS,
            tie_word_embeddings=False,
        ),
    ),
    "llama-tied": (
        "LlamaConfig",
        dict(  # multi-query (1 KV head) and tied embeddings, like SmolLM2
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=1,
            max_position_embeddings=MAX_POS,
            tie_word_embeddings=True,
        ),
    ),
    "mistral": (
        "MistralConfig",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            max_position_embeddings=MAX_POS,
            sliding_window=None,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        dict(  # q/k/v biases
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            max_position_embeddings=MAX_POS,
            tie_word_embeddings=False,
        ),
    ),
    "gpt2": (
        "GPT2Config",
        dict(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=MAX_POS,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    "opt": (
        "OPTConfig",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            ffn_dim=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=MAX_POS,
            word_embed_proj_dim=HIDDEN,
            do_layer_norm_before=True,
        ),
    ),
    "opt-postnorm-proj": (
        "OPTConfig",
        dict(  # OPT-350m layout: post-norm, 32-wide embeddings projected to 64
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            ffn_dim=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=MAX_POS,
            word_embed_proj_dim=32,
            do_layer_norm_before=False,
        ),
    ),
    "gptneox": (
        "GPTNeoXConfig",
        dict(  # partial rotary, parallel residual, untied embed_out
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=MAX_POS,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        ),
    ),
    "falcon-old": (
        "FalconConfig",
        dict(  # Falcon-7B layout: multi-query, parallel attention, one norm
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            multi_query=True,
            parallel_attn=True,
            new_decoder_architecture=False,
            bias=False,
            alibi=False,
            max_position_embeddings=MAX_POS,
        ),
    ),
    "falcon-new": (
        "FalconConfig",
        dict(  # Falcon-40B layout: grouped KV, two norms per layer
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_kv_heads=2,
            new_decoder_architecture=True,
            parallel_attn=True,
            bias=False,
            alibi=False,
            max_position_embeddings=MAX_POS,
        ),
    ),
}

SOURCE_FORMATS = ("safetensors", "sharded", "bin", "sharded-bin")


def tiny_config(name: str, **overrides):
    """The transformers config object of variant ``name`` (``overrides`` replace its kwargs)."""
    import transformers

    cls_name, kwargs = TINY_CONFIGS[name]
    return getattr(transformers, cls_name)(**{**kwargs, **overrides})


def _randomize(model, seed: int) -> None:
    """Random values everywhere: norms near 1, biases and weights small, so every tensor is distinct."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            base = 1.0 if p.dim() == 1 and bool((p == 1).all()) else 0.0
            scale = 0.1 if p.dim() == 1 else 0.05
            p.copy_(base + scale * noise)


def make_tiny_hf(
    name: str, path: str | Path, dtype: str = "float32", fmt: str = "safetensors", seed: int = 0, **overrides
) -> Path:
    """Write tiny random model ``name`` as a HuggingFace directory at ``path``; returns ``path``.

    ``fmt``: ``safetensors`` (one file), ``sharded`` (several safetensors + index), ``bin``
    (``pytorch_model.bin``) or ``sharded-bin`` (``pytorch_model-*.bin`` + index).
    """
    import torch
    import transformers

    path = Path(path)
    torch_dtype = getattr(torch, dtype)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(name, **overrides))
    _randomize(model, seed)
    model = model.to(torch_dtype).eval()
    if fmt == "safetensors":
        model.save_pretrained(path)
    elif fmt == "sharded":
        model.save_pretrained(path, max_shard_size="40KB")
    elif fmt in ("bin", "sharded-bin"):
        model.config.save_pretrained(path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "dtype": dtype}, indent=2))  # as save_pretrained
        _save_bin(model, path, shards=3 if fmt == "sharded-bin" else 1)
    else:
        raise ValueError(f"unknown fmt {fmt!r} (choose from {SOURCE_FORMATS})")
    return path


def _save_bin(model, path: Path, shards: int) -> None:
    """pytorch_model.bin (or shards + index), as older transformers versions wrote them."""
    import torch

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    if shards == 1:
        torch.save(state, path / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, path / file)
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())}, "weight_map": weight_map}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def hf_state_dict(path: str | Path) -> dict:
    """Every tensor of a HF directory as numpy arrays (test helper; small models only)."""
    from ckpt_convert.hf.files import open_hf_source

    with open_hf_source(Path(path)) as src:
        return {name: src.load(name) for name in src.names()}


def convert_tiny(
    name: str,
    out: str | Path,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "float32",
    hf_dir: str | Path | None = None,
    **flags,
) -> Path:
    """Make (or reuse) tiny model ``name`` and convert it with ``ckpt-convert hf``; returns ``out``.

    ``hf_dir`` defaults to ``<out's parent>/hf-<name>`` (created if missing, fp32). ``flags`` become CLI
    flags: ``use_parallel_embedding=True`` -> ``--use_parallel_embedding``, ``group_size=32`` ->
    ``--group_size 32``. Raises ``RuntimeError`` with the CLI's error line if conversion fails.
    """
    import contextlib
    import io

    from ckpt_convert.cli import main

    out = Path(out)
    hf = Path(hf_dir) if hf_dir is not None else out.parent / f"hf-{name}"
    if not (hf / "config.json").exists():
        make_tiny_hf(name, hf)
    argv = [
        "hf",
        "--model_dir",
        str(hf),
        "--output_dir",
        str(out),
        "--dtype",
        dtype,
        "--tp_size",
        str(tp),
        "--pp_size",
        str(pp),
        "--quiet",
    ]
    for key, value in flags.items():
        if value is True:
            argv.append(f"--{key}")
        elif value not in (False, None):
            argv += [f"--{key}", str(value)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"ckpt-convert {' '.join(argv)} failed: {err.getvalue().strip()}")
    return out
