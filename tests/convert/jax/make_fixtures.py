"""Write the JAX fixtures of test_jax*.py: tiny HF models and their weights saved by orbax and flax themselves.

Run from the repository root with jax, orbax-checkpoint and flax installed (requirements.txt; versions.json records
what ran):

    .venv/bin/pip install -c constraints.txt -r tests/convert/jax/requirements.txt
    .venv/bin/python tests/convert/jax/make_fixtures.py

Per model (``MODELS``) it writes ``<name>/hf/`` (transformers' ``from_config`` + ``save_pretrained``, float32, random
weights: the ground truth) and the same weights as JAX trees, each in the layout its family is released or trained in:

- ``llama``: transformers' Flax LLaMA names (``model/layers/0/self_attn/q_proj/kernel``, Dense kernels [in, out]);
- ``gemma1`` / ``gemma2`` / ``gemma3``: the google-deepmind gemma library's tree (``layer_0/attn/q_einsum/w``
  [heads, embed, head_dim], ``kv_einsum/w`` [2, kv_heads, embed, head_dim] or ``qkv_einsum/w`` [3, ...] when
  heads == kv_heads, ``attn_vec_einsum/w`` [heads, head_dim, embed], ``mlp/gating_einsum`` [2, embed, ffw] for
  Gemma 1 and [2, ffw, embed] for Gemma 2/3 (transpose_gating_einsum), ``mlp/linear`` [ffw, embed], norms
  ``*/scale``), nested or in the flat release form (``{"transformer/layer_0/attn/q_einsum": {"w": ...}}``).

Layouts (folder names): ``ocdbt`` (StandardCheckpointer), ``zarr3`` (OCDBT + zarr3), ``per_array`` (use_ocdbt=False,
use_zarr3=False: one zarr folder per leaf), ``manager`` (CheckpointManager, steps 1 and 2; step 1 holds the
embedding negated), ``flax.msgpack`` (flax.serialization.to_bytes), ``chunked.msgpack`` (flax's chunked form of
arrays over its MAX_CHUNK_SIZE, lowered here to 1 KiB), ``train_state.msgpack`` (the tree under ``params`` beside a
step, a learning rate, a note, a list and optimizer moments, as a saved training state holds them).
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import transformers

HERE = Path(__file__).resolve().parent

COMMON = dict(vocab_size=96, hidden_size=16, intermediate_size=24, num_hidden_layers=2, max_position_embeddings=64)
MODELS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "gemma1": ("GemmaConfig", dict(num_attention_heads=2, num_key_value_heads=2, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=4)),
    "gemma3": ("Gemma3TextConfig", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=8)),
}
# model -> (tree form, layouts)
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": (
        "nested",
        ("ocdbt", "zarr3", "per_array", "manager", "flax.msgpack", "chunked.msgpack", "train_state.msgpack"),
    ),
    "gemma1": ("flat", ("per_array", "ocdbt", "flax.msgpack")),
    "gemma2": ("flat", ("ocdbt", "manager")),
    "gemma3": ("nested", ("ocdbt", "manager", "flax.msgpack")),
}


def make_hf(name: str) -> dict[str, np.ndarray]:
    """The tiny HF model saved under ``<name>/hf``; its state dict as float32 arrays. Norm weights are random too
    (vocab 96: the container test's tiny tokenizer fits it)."""
    cls, extra = MODELS[name]
    torch.manual_seed(sum(map(ord, name)))
    config = getattr(transformers, cls)(**COMMON, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    out = HERE / name / "hf"
    model.save_pretrained(out)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def llama_tree(sd: dict[str, np.ndarray]) -> dict:
    """transformers' Flax LLaMA parameter tree (Dense kernels are the Linear weights transposed)."""
    layers = {}
    for i in range(COMMON["num_hidden_layers"]):
        p = f"model.layers.{i}."
        layers[str(i)] = {
            "self_attn": {f"{x}_proj": {"kernel": sd[f"{p}self_attn.{x}_proj.weight"].T} for x in "qkvo"},
            "mlp": {f"{x}_proj": {"kernel": sd[f"{p}mlp.{x}_proj.weight"].T} for x in ("gate", "up", "down")},
            "input_layernorm": {"weight": sd[p + "input_layernorm.weight"]},
            "post_attention_layernorm": {"weight": sd[p + "post_attention_layernorm.weight"]},
        }
    return {
        "model": {
            "embed_tokens": {"embedding": sd["model.embed_tokens.weight"]},
            "layers": layers,
            "norm": {"weight": sd["model.norm.weight"]},
        },
        "lm_head": {"kernel": sd["lm_head.weight"].T},
    }


def gemma_layer(sd: dict[str, np.ndarray], i: int, name: str) -> dict:
    cls, extra = MODELS[name]
    heads, kv, hd, d = extra["num_attention_heads"], extra["num_key_value_heads"], extra["head_dim"], 16
    p = f"model.layers.{i}."

    def heads_in(w: np.ndarray, n: int) -> np.ndarray:  # Linear [n * hd, d] -> einsum [n, d, hd]
        return w.reshape(n, hd, d).transpose(0, 2, 1)

    q, k, v = (sd[f"{p}self_attn.{x}_proj.weight"] for x in "qkv")
    attn = {"attn_vec_einsum": {"w": sd[p + "self_attn.o_proj.weight"].T.reshape(heads, hd, d)}}
    if heads == kv:
        attn["qkv_einsum"] = {"w": np.stack([heads_in(q, heads), heads_in(k, kv), heads_in(v, kv)])}
    else:
        attn["q_einsum"] = {"w": heads_in(q, heads)}
        attn["kv_einsum"] = {"w": np.stack([heads_in(k, kv), heads_in(v, kv)])}
    if name == "gemma3":
        attn["_query_norm"] = {"scale": sd[p + "self_attn.q_norm.weight"]}
        attn["_key_norm"] = {"scale": sd[p + "self_attn.k_norm.weight"]}
    gate, up = sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]
    gating = np.stack([gate.T, up.T]) if name == "gemma1" else np.stack([gate, up])
    layer = {
        "pre_attention_norm": {"scale": sd[p + "input_layernorm.weight"]},
        "attn": attn,
        "mlp": {"gating_einsum": gating, "linear": sd[p + "mlp.down_proj.weight"].T},
    }
    if name == "gemma1":
        layer["pre_ffw_norm"] = {"scale": sd[p + "post_attention_layernorm.weight"]}
    else:
        layer["post_attention_norm"] = {"scale": sd[p + "post_attention_layernorm.weight"]}
        layer["pre_ffw_norm"] = {"scale": sd[p + "pre_feedforward_layernorm.weight"]}
        layer["post_ffw_norm"] = {"scale": sd[p + "post_feedforward_layernorm.weight"]}
    return layer


def gemma_tree(sd: dict[str, np.ndarray], name: str, form: str) -> dict:
    """The gemma library's nested tree, or the flat release form (``transformer/...`` keys, mlp weights under w)."""
    nested = {
        "embedder": {"input_embedding": sd["model.embed_tokens.weight"]},
        "final_norm": {"scale": sd["model.norm.weight"]},
        **{f"layer_{i}": gemma_layer(sd, i, name) for i in range(COMMON["num_hidden_layers"])},
    }
    if form == "nested":
        return nested
    flat: dict = {}

    def walk(node: dict, path: list[str]) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and not all(isinstance(v, np.ndarray) for v in value.values()):
                walk(value, [*path, key])
            elif isinstance(value, dict):
                flat["/".join(["transformer", *path, key])] = value
            else:  # mlp/gating_einsum, mlp/linear: the release form keeps them under "w"
                flat["/".join(["transformer", *path, key])] = {"w": value}

    walk(nested, [])
    return flat


def contiguous(tree: dict) -> dict:
    return {k: contiguous(v) if isinstance(v, dict) else np.ascontiguousarray(v) for k, v in tree.items()}


def negate_embedding(tree: dict) -> dict:
    """Step 1 of the manager fixtures: the same tree with the embedding negated (tells the steps apart)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out[k] = negate_embedding(v)
        else:
            out[k] = -v if k in ("embedding", "input_embedding") else v
    return out


def save(tree: dict, layout: str, target: Path) -> None:
    import flax.serialization
    import orbax.checkpoint as ocp

    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    if layout == "train_state.msgpack":
        moments = {"mu": np.zeros(3, np.float32), "count": np.int32(2)}
        tree = {"step": 2, "params": tree, "opt_state": {"0": moments}, "lr": 0.5, "note": "x", "seen": [1, None]}
    if layout.endswith(".msgpack"):
        if layout == "chunked.msgpack":
            flax.serialization.MAX_CHUNK_SIZE = 1024
        target.write_bytes(flax.serialization.to_bytes(tree))
        flax.serialization.MAX_CHUNK_SIZE = 2**30
    elif layout == "manager":
        with ocp.CheckpointManager(target.resolve()) as manager:
            for step, item in ((1, negate_embedding(tree)), (2, tree)):
                manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(item)))
                manager.wait_until_finished()
    else:
        handler = {
            "ocdbt": ocp.PyTreeCheckpointHandler(),
            "zarr3": ocp.PyTreeCheckpointHandler(use_zarr3=True),
            "per_array": ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=False),
        }[layout]
        checkpointer = ocp.Checkpointer(handler)
        checkpointer.save(target.resolve(), args=ocp.args.PyTreeSave(tree))


def main() -> int:
    for name, (form, layouts) in LAYOUTS.items():
        sd = make_hf(name)
        tree = contiguous(llama_tree(sd) if name == "llama" else gemma_tree(sd, name, form))
        for layout in layouts:
            save(tree, layout, HERE / name / layout)
    versions = {p: version(p) for p in ("jax", "jaxlib", "orbax-checkpoint", "flax", "tensorstore", "torch")}
    versions["transformers"] = transformers.__version__
    (HERE / "versions.json").write_text(json.dumps(versions, indent=1, sort_keys=True) + "\n")
    print(json.dumps(versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
