"""Expected checkpoint tensors of a HF model, written from the transformers modules' own semantics.

Independent of the converter's mapping tables: for each architecture it says, in plain code, which
transformers parameter (and which slice of a fused one, following the model's forward code) becomes
which checkpoint tensor. Used to check that converted-and-merged checkpoints are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptfmt import to_numpy


def hf_model(path: str | Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()


def reference_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Global canonical name -> full tensor, in the HF model's dtype."""
    model = hf_model(path)
    kind = model.config.model_type
    builder = {
        "llama": _llama,
        "mistral": _llama,
        "qwen2": _llama,
        "gpt2": _gpt2,
        "opt": _opt,
        "gpt_neox": _gptneox,
        "falcon": _falcon,
    }[kind]
    out = {}
    for name, tensor in builder(model).items():
        out[name] = to_numpy(tensor.detach()).copy()
    return out


def _layer(i: int, name: str) -> str:
    return f"transformer.layers.{i}.{name}"


def _llama(model) -> dict:
    m = model.model
    out = {
        "transformer.vocab_embedding.weight": m.embed_tokens.weight,
        "transformer.ln_f.weight": m.norm.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, layer in enumerate(m.layers):
        a, mlp = layer.self_attn, layer.mlp
        out[_layer(i, "input_layernorm.weight")] = layer.input_layernorm.weight
        out[_layer(i, "post_layernorm.weight")] = layer.post_attention_layernorm.weight
        out[_layer(i, "attention.qkv.weight")] = _cat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)
        if a.q_proj.bias is not None:
            out[_layer(i, "attention.qkv.bias")] = _cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
        out[_layer(i, "attention.dense.weight")] = a.o_proj.weight
        out[_layer(i, "mlp.fc.weight")] = mlp.gate_proj.weight  # goes through the activation
        out[_layer(i, "mlp.gate.weight")] = mlp.up_proj.weight
        out[_layer(i, "mlp.proj.weight")] = mlp.down_proj.weight
    return out


def _gpt2(model) -> dict:
    t = model.transformer
    out = {
        "transformer.vocab_embedding.weight": t.wte.weight,
        "transformer.position_embedding.weight": t.wpe.weight,
        "lm_head.weight": model.lm_head.weight,
        "transformer.ln_f.weight": t.ln_f.weight,
        "transformer.ln_f.bias": t.ln_f.bias,
    }
    for i, block in enumerate(t.h):
        pairs = {"input_layernorm": block.ln_1, "post_layernorm": block.ln_2}
        for name, ln in pairs.items():
            out[_layer(i, f"{name}.weight")], out[_layer(i, f"{name}.bias")] = ln.weight, ln.bias
        conv1d = {
            "attention.qkv": block.attn.c_attn,
            "attention.dense": block.attn.c_proj,
            "mlp.fc": block.mlp.c_fc,
            "mlp.proj": block.mlp.c_proj,
        }
        for name, conv in conv1d.items():  # Conv1D computes x @ W + b with W [in, out]
            out[_layer(i, f"{name}.weight")] = conv.weight.T
            out[_layer(i, f"{name}.bias")] = conv.bias
    return out


def _opt(model) -> dict:
    d = model.model.decoder
    out = {
        "transformer.vocab_embedding.weight": d.embed_tokens.weight,
        "transformer.position_embedding.weight": d.embed_positions.weight[2:],  # OPT offsets positions by 2
        "lm_head.weight": model.lm_head.weight,
    }
    if d.project_in is not None:
        out["transformer.project_in.weight"] = d.project_in.weight
        out["transformer.project_out.weight"] = d.project_out.weight
    if d.final_layer_norm is not None:
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = (
            d.final_layer_norm.weight,
            d.final_layer_norm.bias,
        )
    for i, layer in enumerate(d.layers):
        a = layer.self_attn
        mods = {
            "input_layernorm": layer.self_attn_layer_norm,
            "post_layernorm": layer.final_layer_norm,
            "attention.dense": a.out_proj,
            "mlp.fc": layer.fc1,
            "mlp.proj": layer.fc2,
        }
        for name, mod in mods.items():
            out[_layer(i, f"{name}.weight")], out[_layer(i, f"{name}.bias")] = mod.weight, mod.bias
        out[_layer(i, "attention.qkv.weight")] = _cat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)
        out[_layer(i, "attention.qkv.bias")] = _cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
    return out


def _gptneox(model) -> dict:
    g = model.gpt_neox
    heads = model.config.num_attention_heads
    out = {
        "transformer.vocab_embedding.weight": g.embed_in.weight,
        "lm_head.weight": model.get_output_embeddings().weight,
        "transformer.ln_f.weight": g.final_layer_norm.weight,
        "transformer.ln_f.bias": g.final_layer_norm.bias,
    }
    for i, layer in enumerate(g.layers):
        mods = {
            "input_layernorm": layer.input_layernorm,
            "post_attention_layernorm": layer.post_attention_layernorm,
            "attention.dense": layer.attention.dense,
            "mlp.fc": layer.mlp.dense_h_to_4h,
            "mlp.proj": layer.mlp.dense_4h_to_h,
        }
        for name, mod in mods.items():
            out[_layer(i, f"{name}.weight")], out[_layer(i, f"{name}.bias")] = mod.weight, mod.bias
        qkv = layer.attention.query_key_value  # output viewed as [heads, 3 * head_size]: q, k, v per head
        for kind in ("weight", "bias"):
            t = getattr(qkv, kind)
            per_head = t.reshape(heads, 3, -1, *t.shape[1:])
            out[_layer(i, f"attention.qkv.{kind}")] = _cat(
                *(per_head[:, j].reshape(-1, *t.shape[1:]) for j in range(3))
            )
    return out


def _falcon(model) -> dict:
    t, cfg = model.transformer, model.config
    heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    out = {
        "transformer.vocab_embedding.weight": t.word_embeddings.weight,
        "lm_head.weight": model.lm_head.weight,
        "transformer.ln_f.weight": t.ln_f.weight,
        "transformer.ln_f.bias": t.ln_f.bias,
    }
    for i, block in enumerate(t.h):
        norms = {"input_layernorm": block.ln_attn if cfg.new_decoder_architecture else block.input_layernorm}
        if cfg.new_decoder_architecture:
            norms["mlp_layernorm"] = block.ln_mlp
        elif not cfg.parallel_attn:
            norms["post_layernorm"] = block.post_attention_layernorm
        for name, ln in norms.items():
            out[_layer(i, f"{name}.weight")], out[_layer(i, f"{name}.bias")] = ln.weight, ln.bias
        mods = {
            "attention.dense": block.self_attention.dense,
            "mlp.fc": block.mlp.dense_h_to_4h,
            "mlp.proj": block.mlp.dense_4h_to_h,
        }
        for name, mod in mods.items():
            out[_layer(i, f"{name}.weight")] = mod.weight
            if mod.bias is not None:
                out[_layer(i, f"{name}.bias")] = mod.bias
        qkv = block.self_attention.query_key_value
        for kind in ("weight", "bias"):
            w = getattr(qkv, kind)
            if w is None:
                continue
            rest = w.shape[1:]
            if cfg.new_decoder_architecture:  # FalconAttention._split_heads, new architecture
                g = w.reshape(cfg.num_kv_heads, heads // cfg.num_kv_heads + 2, hd, *rest)
                q, k, v = g[:, :-2], g[:, -2], g[:, -1]
            elif cfg.multi_query:  # [q heads..., k, v]
                g = w.reshape(heads + 2, hd, *rest)
                q, k, v = g[:-2], g[-2], g[-1]
            else:  # per head [q, k, v]
                g = w.reshape(heads, 3, hd, *rest)
                q, k, v = g[:, 0], g[:, 1], g[:, 2]
            out[_layer(i, f"attention.qkv.{kind}")] = _cat(*(x.reshape(-1, *rest) for x in (q, k, v)))
    return out


def _cat(*tensors):
    import torch

    return torch.cat(list(tensors), dim=0)
