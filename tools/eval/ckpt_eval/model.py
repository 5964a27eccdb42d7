"""One decoder for every architecture of ``ckptfmt.names.FAMILIES`` (gpt-fast style), at one rank's shapes.

Module and parameter names mirror the checkpoint's tensor names (``transformer.layers.0.attention.qkv.weight``),
so loading is a name-for-name copy. Architecture differences come from ``ckptfmt.ModelSpec`` fields, never
from the architecture name. Tensor parallelism is in the shapes (each rank builds its own slice) plus the
collectives of ``Parallel``; a pipeline stage holds only its layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ckptfmt import ModelSpec
from ckptfmt.names import kv_heads_per_rank, layer_norms, pad_to_multiple
from ckptfmt.semantics import TORCH, alibi_slopes, check_support, rotary_inv_freq

from .distributed import Parallel

# ``ModelSpec.activation`` -> function (semantics.ACTIVATIONS maps the config's names onto these)
ACTIVATIONS = {
    "gelu_erf": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass(frozen=True)
class RankShapes:
    """What one rank holds: its layers, and how embedding and lm_head are split."""

    layers: range
    first_stage: bool
    last_stage: bool
    embedding_split: str  # "none" | "rows" (vocab rows, padded) | "cols" (hidden columns)
    head_from_embedding: bool  # share_embedding_table without an lm_head tensor


class RMSNorm(nn.Module):
    """Normalized in float32, scaled in the model dtype (as the reference implementations do)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(spec: ModelSpec, width: int | None = None) -> nn.Module:
    if spec.norm == "rmsnorm":
        return RMSNorm(width or spec.hidden_size, spec.norm_epsilon)
    return nn.LayerNorm(spec.hidden_size, eps=spec.norm_epsilon, bias=spec.norm_bias)


def row_linear(par: Parallel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A row-parallel linear: partial products summed over tp ranks, then the (unsplit) bias added once."""
    y = par.all_reduce(F.linear(x, weight))
    return y + bias if bias is not None else y


class RowLinear(nn.Module):
    """Row-parallel linear (``row_linear``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, par: Parallel):
        super().__init__()
        self.par = par
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_linear(self.par, x, self.weight, self.bias)


class ParallelEmbedding(nn.Module):
    """A lookup table, whole, split on vocab rows (masked lookup + sum) or on hidden columns (gather)."""

    def __init__(self, rows: int, width: int, split: str, par: Parallel):
        super().__init__()
        self.split, self.par = split, par
        if split == "rows":
            rows = pad_to_multiple(rows, par.tp_size) // par.tp_size
        elif split == "cols":
            width //= par.tp_size
        self.weight = nn.Parameter(torch.empty(rows, width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.split == "rows":
            rows = self.weight.shape[0]
            local = ids - self.par.tp_rank * rows
            inside = (local >= 0) & (local < rows)
            out = F.embedding(local.clamp(0, rows - 1), self.weight) * inside.unsqueeze(-1).to(self.weight.dtype)
            return self.par.all_reduce(out)
        out = F.embedding(ids, self.weight)
        return self.par.all_gather(out, dim=-1) if self.split == "cols" else out


class KVCache(nn.Module):
    """Static cache, keys and values in one buffer [2, batch, kv_heads, max_seq, head_size] so a step writes
    both with one kernel; ``slots`` are the sequence indices written."""

    kv: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, batch: int, kv_heads: int, max_seq: int, head_size: int, dtype, device):
        super().__init__()
        shape = (2, batch, kv_heads, max_seq, head_size)
        self.register_buffer("kv", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        torch._dynamo.mark_static_address(self.kv)  # updated in place: compiled CUDA graphs keep its address

    @property
    def batch(self) -> int:
        return self.kv.shape[1]

    @property
    def length(self) -> int:
        return self.kv.shape[3]

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.kv.index_copy_(3, slots, torch.stack([k, v]))
        return self.kv[0], self.kv[1]


class Rotary(nn.Module):
    """Rotary position embedding on the first ``rotary_dim`` channels: rotate-half (NeoX) or interleaved (GPT-J)."""

    inv_freq: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, spec: ModelSpec, local: bool = False):
        """``local``: of the local layers, which have a base of their own (Gemma 3's rope_local_base_freq)."""
        super().__init__()
        self.dim, self.interleaved = spec.rotary_dim, spec.rotary_interleaved
        base, scaling = (spec.rotary_base_local, None) if local else (spec.rotary_base, spec.rotary_scaling)
        assert base is not None  # a local rotary exists only where the spec has a local base
        inv_freq = rotary_inv_freq(self.dim, base, scaling)
        self.register_buffer("inv_freq", torch.tensor(inv_freq, device="cpu"), persistent=False)  # real under meta

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [batch, seq, 1, rotary_dim] for integer ``positions`` [batch, seq], computed in float32."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.to(positions.device)
        freqs = freqs.repeat_interleave(2, -1) if self.interleaved else torch.cat([freqs, freqs], -1)
        return freqs.cos().to(dtype).unsqueeze(2), freqs.sin().to(dtype).unsqueeze(2)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, seq, heads, head_size]."""
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        if self.interleaved:
            turned = torch.stack([-rot[..., 1::2], rot[..., 0::2]], -1).flatten(-2)
        else:
            half = self.dim // 2
            turned = torch.cat([-rot[..., half:], rot[..., :half]], -1)
        return torch.cat([rot * cos + turned * sin, rest], -1)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, par: Parallel):
        super().__init__()
        self.heads = spec.num_heads // par.tp_size
        self.kv_heads = kv_heads_per_rank(spec.num_kv_heads, par.tp_size)
        self.head_size = spec.head_size
        self.scale, self.softcap = spec.attention_scale, spec.attn_logit_softcapping
        out = (self.heads + 2 * self.kv_heads) * self.head_size
        self.qkv = nn.Linear(spec.hidden_size, out, bias=spec.qkv_bias)
        if spec.qk_norm:  # per head, before the rotary embedding (Gemma 3)
            self.q_layernorm = make_norm(spec, spec.head_size)
            self.k_layernorm = make_norm(spec, spec.head_size)
        self.dense = RowLinear(self.heads * self.head_size, spec.hidden_size, spec.bias, par)
        self.kv_cache: KVCache | None = None
        self.kv_quant: nn.Module | None = None  # an INT8/FP8 cache: quantized on write (quantized.KVQuant)

    def forward(self, x, slots, mask, rotary: Rotary | None, cos_sin) -> torch.Tensor:
        b, t, _ = x.shape
        q_size, kv_size = self.heads * self.head_size, self.kv_heads * self.head_size
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(b, t, self.heads, self.head_size)
        k = k.view(b, t, self.kv_heads, self.head_size)
        v = v.view(b, t, self.kv_heads, self.head_size)
        if hasattr(self, "q_layernorm"):
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        if rotary is not None:
            q, k = rotary.rotate(q, *cos_sin), rotary.rotate(k, *cos_sin)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        assert self.kv_cache is not None, "setup_cache allocates the KV caches"
        if self.kv_quant is not None:
            k, v = self.kv_quant(k), self.kv_quant(v)
        gqa = self.kv_heads != self.heads
        if isinstance(mask, Causal):  # a prefill from slot 0: plain causal over its own positions
            padded = (k, v) if mask.to_padded is None else (shift(z, mask.to_padded, 2) for z in (k, v))
            self.kv_cache.update(slots, *padded)
            return self.dense(
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa, scale=self.scale)
                .transpose(1, 2)
                .reshape(b, t, q_size)
            )
        k, v = self.kv_cache.update(slots, k, v)
        if t == 1 or self.softcap is not None:
            y = grouped_attention(q, k, v, mask, self.scale, self.softcap)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=self.scale)
        return self.dense(y.transpose(1, 2).reshape(b, t, q_size))


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float | None = None
) -> torch.Tensor:
    """Queries against the cache, grouped-query heads folded into the query rows so no key/value head is
    copied: q [batch, heads, seq, d], k/v [batch, kv_heads, max_seq, d], ``mask`` boolean (or an additive bias)
    broadcastable to [batch, heads, seq, max_seq]. Scores (``scale``, then ``softcap * tanh(s / softcap)``)
    and softmax in float32."""
    b, heads, t, d = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scores = torch.matmul(q.reshape(b, kv_heads, group * t, d), k.transpose(-1, -2)).float() * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(b, kv_heads, group, t, -1)
    if mask.dtype == torch.bool:  # [batch, 1, seq, max_seq]
        scores = scores.masked_fill(~mask.view(mask.shape[0], 1, 1, t, -1), float("-inf"))
    else:  # ALiBi: [batch, heads, seq, max_seq]
        scores = scores + mask.float().expand(b, heads, t, -1).reshape(b, kv_heads, group, t, -1)
    weights = scores.softmax(-1).to(v.dtype).view(b, kv_heads, group * t, -1)
    return torch.matmul(weights, v).view(b, heads, t, d)


class MLP(nn.Module):
    """``proj(act(fc(x)) [* gate(x)])``; ``fc`` is the activated branch of a gated MLP."""

    def __init__(self, spec: ModelSpec, par: Parallel):
        super().__init__()
        self.act = ACTIVATIONS[spec.activation]
        ffn = spec.intermediate_size // par.tp_size
        self.fc = nn.Linear(spec.hidden_size, ffn, bias=spec.bias)
        self.gate = nn.Linear(spec.hidden_size, ffn, bias=spec.bias) if spec.gated_mlp else None
        self.proj = RowLinear(ffn, spec.hidden_size, spec.bias, par)
        self.fc_gate: nn.Parameter | None = None  # [fc; gate] rows, one GEMM for both (see ``fuse``)
        self.fc_gate_bias: nn.Parameter | None = None

    def fuse(self) -> None:
        """Stack the gate rows under fc's so a gated MLP reads both with one GEMM (fc and gate stay the
        checkpoint's tensors, as views of the stacked one). Packed linears (``quantized.PackedLinear``) stay apart."""
        if self.gate is None or hasattr(self.fc, "packed_weight"):
            return
        ffn = self.fc.weight.shape[0]
        for suffix in ("weight", "bias"):
            fc, gate = getattr(self.fc, suffix), getattr(self.gate, suffix)
            if fc is None:
                continue
            both = torch.cat([fc.detach(), gate.detach()])
            setattr(self, f"fc_gate{'' if suffix == 'weight' else '_bias'}", nn.Parameter(both, requires_grad=False))
            setattr(self.fc, suffix, nn.Parameter(both[:ffn], requires_grad=False))
            setattr(self.gate, suffix, nn.Parameter(both[ffn:], requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc_gate is not None:
            a, g = F.linear(x, self.fc_gate, self.fc_gate_bias).chunk(2, dim=-1)
            return self.proj(self.act(a) * g)
        h = self.act(self.fc(x))
        return self.proj(h * self.gate(x) if self.gate is not None else h)


class Block(nn.Module):
    """Decoder layer ``layer`` (global index); norms are registered under the checkpoint's names
    (``input_layernorm``, ...). ``local``: it attends through the sliding window."""

    def __init__(self, spec: ModelSpec, par: Parallel, layer: int):
        super().__init__()
        self.spec, self.local = spec, spec.local_layer(layer)
        for name in layer_norms(spec):
            self.add_module(name, make_norm(spec))
        self.attention = Attention(spec, par)
        self.mlp = MLP(spec, par)

    def sublayer_norm(self, name: str | None, y: torch.Tensor) -> torch.Tensor:
        """``y`` normed by norm ``name`` (Gemma 2/3's norms on the attention and MLP outputs); as is for None."""
        return getattr(self, name)(y) if name else y

    def forward(self, x, slots, mask, rotary, cos_sin) -> torch.Tensor:
        spec = self.spec
        attn_norm = getattr(self, spec.attn_norm)
        mlp_norm = getattr(self, spec.mlp_norm) if spec.mlp_norm else None
        if not spec.pre_norm:  # OPT post-norm: normalize after each residual add
            assert mlp_norm is not None  # post-norm layers have both norms
            x = attn_norm(x + self.attention(x, slots, mask, rotary, cos_sin))
            return mlp_norm(x + self.mlp(x))
        h = attn_norm(x)
        a = self.attention(h, slots, mask, rotary, cos_sin)
        if spec.parallel_residual:  # Falcon with mlp_norm None: the MLP reads the attention norm's output
            return x + a + self.mlp(mlp_norm(x) if mlp_norm is not None else h)
        x = x + self.sublayer_norm(spec.attn_out_norm, a)
        assert mlp_norm is not None  # only a parallel residual goes without one
        return x + self.sublayer_norm(spec.mlp_out_norm, self.mlp(mlp_norm(x)))


class Backbone(nn.Module):
    """``transformer.*``: embeddings, this stage's layers, final norm."""

    def __init__(self, spec: ModelSpec, shapes: RankShapes, par: Parallel):
        super().__init__()
        if shapes.first_stage:
            self.vocab_embedding = ParallelEmbedding(spec.vocab_size, spec.embed_dim, shapes.embedding_split, par)
            if spec.learned_positions:
                self.position_embedding = ParallelEmbedding(
                    spec.max_position_embeddings or 0, spec.hidden_size, shapes.embedding_split, par
                )
            if spec.embed_proj_dim:
                self.project_in = nn.Linear(spec.embed_proj_dim, spec.hidden_size, bias=False)
        self.layers = nn.ModuleList(Block(spec, par, i) for i in shapes.layers)
        if shapes.last_stage:
            if spec.has_ln_f:
                self.ln_f = make_norm(spec)
            if spec.embed_proj_dim:
                self.project_out = nn.Linear(spec.hidden_size, spec.embed_proj_dim, bias=False)

    def blocks(self) -> list[Block]:
        """This stage's layers, typed (iterating ``nn.ModuleList`` gives plain modules)."""
        return cast("list[Block]", list(self.layers))


class Transformer(nn.Module):
    """One rank's part of the model: ``forward`` runs token ids (or the previous stage's hidden states)
    through this stage and returns hidden states, or float32 logits on the last stage."""

    def __init__(self, spec: ModelSpec, shapes: RankShapes, par: Parallel):
        super().__init__()
        check_support(spec, TORCH)  # one line naming the field this backend does not compute
        self.spec, self.shapes, self.par = spec, shapes, par
        self.transformer = Backbone(spec, shapes, par)
        if shapes.last_stage:
            rows = pad_to_multiple(spec.vocab_size, par.tp_size) // par.tp_size
            self.lm_head = nn.Linear(spec.embed_dim, rows, bias=spec.lm_head_bias)
        self.rotary = Rotary(spec) if spec.rotary else None  # every layer's, or the global layers'
        local = spec.rotary and spec.rotary_base_local is not None and spec.local_layer(0)
        self.rotary_local = Rotary(spec, local=True) if local else None  # Gemma 3's local layers
        self.window: int | None = spec.sliding_window  # of the local layers (``Block.local``)
        self.alibi = None  # this rank's head slopes, already scaled where the family scales the bias
        if spec.position_embedding_type.startswith("alibi"):
            heads = spec.num_heads // par.tp_size
            slopes = alibi_slopes(spec)[par.tp_rank * heads : (par.tp_rank + 1) * heads]
            self.alibi = torch.from_numpy(slopes.copy())
        self.prompt_blocks: list[Callable[..., torch.Tensor]] | None = None  # compiled layers (``compile_prompts``)

    def compile_prompts(self) -> None:
        """Run prompts (more than one position) through ``torch.compile``d layers: one compiled graph of a layer,
        dynamic in length, which every layer reuses (their weights are its inputs), so prompts of any length take
        it without a recompile (a new batch size or a grown KV cache costs one). Inductor fuses the norms, rotary,
        activation and residual adds around the GEMMs and SDPA, and a layer's ~20 eager operator calls become a
        few kernel launches, which is what a short prompt's prefill waited on. One-token steps keep the layers
        as they are."""
        self.prompt_blocks = [torch.compile(layer, dynamic=True) for layer in self.transformer.blocks()]

    def layer_rotary(self, local: bool) -> Rotary | None:
        """The rotary embedding of a local or a global layer (Gemma 3's local layers have a base of their own)."""
        return (self.rotary_local or self.rotary) if local else self.rotary

    def setup_cache(self, batch: int, max_seq: int) -> None:
        """KV caches for ``batch`` sequences of up to ``max_seq`` positions. Buffers are kept while the batch
        size is the same and they are long enough, so compiled decode graphs stay valid across calls."""
        p = next(self.parameters())
        for layer in self.transformer.blocks():
            a, old = layer.attention, layer.attention.kv_cache
            if old is not None and old.batch == batch and old.length >= max_seq:
                old.kv.zero_()
            else:
                length = max(max_seq, old.length if old is not None else 0)
                a.kv_cache = KVCache(batch, a.kv_heads, length, a.head_size, p.dtype, p.device)

    def causal_prefill(self, slots: torch.Tensor, pad: torch.Tensor) -> Causal | None:
        """A ``Causal`` for a prefill from cache slot 0 with no ALiBi, no attention softcap and no window
        shorter than the prompt: attention is then plain causal over each row's own tokens (left-padded rows
        are shifted to start at 0), and SDPA's causal kernels skip the masked half. The summarization
        prompts are such batches. Reads two numbers from the device, once per prefill."""
        t = slots.numel()
        if t == 1 or self.alibi is not None or self.spec.attn_logit_softcapping or (self.window or t) < t:
            return None
        if int(slots[0]) != 0:
            return None
        if not bool(pad.any()):
            return Causal()
        s = torch.arange(t, device=pad.device)
        return Causal(to_aligned=(s + pad[:, None]) % t, to_padded=(s - pad[:, None]) % t)

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.vocab_embedding(tokens)
        if self.spec.embedding_scale != 1:  # Gemma: x sqrt(hidden_size), the factor rounded to the model dtype
            x = x * torch.tensor(self.spec.embedding_scale, dtype=x.dtype)
        if self.spec.embed_proj_dim:
            x = t.project_in(x)
        if self.spec.learned_positions:
            x = x + t.position_embedding(positions)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        if self.spec.has_ln_f:
            x = t.ln_f(x)
        if self.spec.embed_proj_dim:
            x = t.project_out(x)
        logits = self.par.all_gather(self.lm_head(x), dim=-1)[..., : self.spec.vocab_size]
        cap = self.spec.final_logit_softcapping
        return (torch.tanh(logits / cap) * cap if cap else logits).float()

    def forward(
        self, inputs: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """``inputs``: token ids [batch, seq] on the first stage, else hidden states [batch, seq, hidden];
        ``slots``: cache indices [seq] of these positions; ``pad``: left-padding length per sequence [batch];
        ``last_only``: logits of the last position only."""
        positions = (slots.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
        x = self.embed(inputs, positions) if self.shapes.first_stage else inputs
        causal = self.causal_prefill(slots, pad)
        if causal is not None and causal.to_aligned is not None:
            x, positions = shift(x, causal.to_aligned, 1), shift(positions, causal.to_aligned, 1)
        masks: dict[bool, torch.Tensor | Causal | None] = {False: causal, True: causal}  # global, local layers
        if causal is None:
            cache = cast(Block, self.transformer.layers[0]).attention.kv_cache
            assert cache is not None, "setup_cache allocates the KV caches"
            for local in {layer.local for layer in self.transformer.blocks()}:
                mask = attention_mask(slots, pad, cache.length, self.window if local else None)
                masks[local] = alibi_bias(self.alibi, pad, mask, x.dtype) if self.alibi is not None else mask
        rotary = {local: self.layer_rotary(local) for local in (False, True)}
        cos_sin = {False: self.rotary.cos_sin(positions, x.dtype) if self.rotary is not None else None}
        cos_sin[True] = self.rotary_local.cos_sin(positions, x.dtype) if self.rotary_local else cos_sin[False]
        blocks = self.transformer.blocks()
        run: list[Callable[..., torch.Tensor]] = list(blocks)
        if self.prompt_blocks and inputs.shape[1] > 1:
            run = self.prompt_blocks
        for layer, call in zip(blocks, run, strict=True):
            x = call(x, slots, masks[layer.local], rotary[layer.local], cos_sin[layer.local])
        if causal is not None and causal.to_padded is not None:
            x = shift(x, causal.to_padded, 1)
        if not self.shapes.last_stage:
            return x
        return self.head(x[:, -1:] if last_only else x)


@dataclass(frozen=True)
class Causal:
    """Attention of a prefill from cache slot 0 as plain causal over its own positions. With left padding,
    the layers run on rows shifted left by their padding (``to_aligned``), so every row starts at position 0,
    while the KV cache is written in the padded layout that decode steps read (``to_padded``)."""

    to_aligned: torch.Tensor | None = None  # [batch, seq]: aligned position j holds padded (j + pad) % seq
    to_padded: torch.Tensor | None = None  # [batch, seq]: padded position s holds aligned (s - pad) % seq


def shift(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` with the sequence axis ``dim`` (1 or 2) of each row reordered by ``index`` [batch, seq]."""
    shape = [index.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = index.shape[1]
    return x.gather(dim, index.view(shape).expand_as(x))


def attention_mask(slots: torch.Tensor, pad: torch.Tensor, max_seq: int, window: int | None) -> torch.Tensor:
    """Boolean [batch, 1, seq, max_seq]: causal, no left padding, optional sliding window.

    A padding query may always see itself, so that no row is empty (its output is never used).
    """
    keys = torch.arange(max_seq, device=slots.device)
    q = slots.view(1, -1, 1)
    allowed = (keys <= q) & (keys >= pad.view(-1, 1, 1))
    if window:
        allowed &= keys > q - window
    return (allowed | (keys == q)).unsqueeze(1)


def alibi_bias(slopes: torch.Tensor, pad: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [batch, heads, seq, max_seq]: slope * key position where ``mask`` allows, else -inf."""
    keys = torch.arange(mask.shape[-1], device=pad.device)
    positions = (keys.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0).float()  # [batch, max_seq]
    bias = slopes.view(1, -1, 1, 1) * positions.view(positions.shape[0], 1, 1, -1)
    return bias.masked_fill(~mask, float("-inf")).to(dtype)
