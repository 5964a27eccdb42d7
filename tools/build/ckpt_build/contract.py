"""What one rank's engine holds (``RankLayout``) and the I/O contract its network declares.

Names and shapes live here once: the network declares its inputs/outputs from these ``IoTensor`` entries,
and the same entries go into the engine config for the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptfmt.config import CheckpointConfig
from ckptfmt.engine import (
    CACHE_AXES,
    HIDDEN_IN,
    HIDDEN_OUT,
    INPUT_IDS,
    KEY_IN,
    KEY_OUT,
    LAST_TOKEN_INDEX,
    LOGITS,
    POSITION_IDS,
    VALUE_IN,
    VALUE_OUT,
    BuildConfig,
    IoContract,
    IoTensor,
    KvCacheLayout,
    StageIo,
)
from ckptfmt.names import ModelSpec, kv_heads_per_rank, model_spec, pad_to_multiple


@dataclass(frozen=True)
class RankLayout:
    """One rank's share of the model and the limits its engine is built for."""

    config: CheckpointConfig
    spec: ModelSpec
    rank: int
    build: BuildConfig

    @property
    def tp_size(self) -> int:
        return self.config.mapping.tp_size

    @property
    def tp_rank(self) -> int:
        return self.config.mapping.tp_rank(self.rank)

    @property
    def pp_rank(self) -> int:
        return self.config.mapping.pp_rank(self.rank)

    @property
    def first_stage(self) -> bool:
        return self.config.mapping.is_first_stage(self.rank)

    @property
    def last_stage(self) -> bool:
        return self.config.mapping.is_last_stage(self.rank)

    @property
    def layers(self) -> range:
        return self.config.mapping.layers_of_rank(self.spec.num_layers, self.rank)

    @property
    def dtype(self) -> str:
        return self.config.dtype

    @property
    def heads(self) -> int:
        return self.spec.num_heads // self.tp_size

    @property
    def kv_heads(self) -> int:
        return kv_heads_per_rank(self.spec.num_kv_heads, self.tp_size)

    @property
    def padded_vocab(self) -> int:
        return pad_to_multiple(self.spec.vocab_size, self.tp_size)


def rank_layout(config: CheckpointConfig, rank: int, build: BuildConfig) -> RankLayout:
    return RankLayout(config=config, spec=model_spec(config), rank=rank, build=build)


MEANINGS = {
    INPUT_IDS: "token ids, right-padded to the longest sequence of the step",
    HIDDEN_IN: "hidden states from the previous pipeline stage",
    POSITION_IDS: "position of each token = its KV-cache slot (past length + index); the step writes cache slots "
    "position_ids[b, 0] ... and attends to slots <= position_ids[b, s] (in a sliding-window layer, the last "
    "sliding_window of them)",
    LAST_TOKEN_INDEX: "index along seq of each sequence's last real token (its logits are returned)",
    HIDDEN_OUT: "hidden states for the next pipeline stage",
}


def stage_io(config: CheckpointConfig, pp_rank: int, build: BuildConfig) -> StageIo:
    """Inputs and outputs of the engines of pipeline stage ``pp_rank``."""
    layout = rank_layout(config, config.mapping.rank(0, pp_rank), build)
    dt = layout.dtype
    hidden: list[int | str] = ["batch", "seq", layout.spec.hidden_size]
    first = IoTensor(INPUT_IDS, "int32", ["batch", "seq"]) if layout.first_stage else IoTensor(HIDDEN_IN, dt, hidden)
    inputs = [first, IoTensor(POSITION_IDS, "int32", ["batch", "seq"])]
    if layout.last_stage and build.gather_last_token_logits:
        inputs.append(IoTensor(LAST_TOKEN_INDEX, "int32", ["batch"]))
    if not layout.last_stage:
        outputs = [IoTensor(HIDDEN_OUT, dt, hidden)]
    elif build.gather_last_token_logits:
        outputs = [
            IoTensor(
                LOGITS,
                build.logits_dtype,
                ["batch", layout.spec.vocab_size],
                "logits of the token at last_token_index of each sequence (full vocab)",
            )
        ]
    else:
        outputs = [
            IoTensor(
                LOGITS,
                build.logits_dtype,
                ["batch", "seq", layout.spec.vocab_size],
                "logits of every token (full vocab)",
            )
        ]
    for t in inputs + outputs:
        t.meaning = t.meaning or MEANINGS[t.name]
    cache_shape: list[int | str] = ["batch", layout.kv_heads, build.max_seq_len, layout.spec.head_size]
    for layer in layout.layers:
        for tmpl_in, tmpl_out, what in ((KEY_IN, KEY_OUT, "key"), (VALUE_IN, VALUE_OUT, "value")):
            name = tmpl_in.format(layer=layer)
            inputs.append(IoTensor(name, dt, cache_shape, f"{what} cache of layer {layer} (updated in place)"))
            outputs.append(
                IoTensor(
                    tmpl_out.format(layer=layer),
                    dt,
                    cache_shape,
                    f"updated {what} cache of layer {layer}: the same buffer as {name}",
                    alias_of=name,
                )
            )
    return StageIo(pp_rank=pp_rank, layers=list(layout.layers), inputs=inputs, outputs=outputs)


def io_contract(config: CheckpointConfig, build: BuildConfig) -> IoContract:
    spec = model_spec(config)
    kv = KvCacheLayout(
        axes=CACHE_AXES,
        kv_heads_per_rank=kv_heads_per_rank(spec.num_kv_heads, config.mapping.tp_size),
        head_size=spec.head_size,
        max_seq_len=build.max_seq_len,
        dtype=config.dtype,
        key_input=KEY_IN,
        value_input=VALUE_IN,
        key_output=KEY_OUT,
        value_output=VALUE_OUT,
    )
    return IoContract(
        dims={"batch": [1, build.max_batch_size], "seq": [1, build.max_input_len]},
        kv_cache=kv,
        stages=[stage_io(config, p, build) for p in range(config.mapping.pp_size)],
        notes=[
            "padded layout: every sequence of a step is right-padded to seq; padding tokens write cache slots "
            "that later steps overwrite or mask",
            "prefill and decode use the same engine: decode is seq = 1 with position_ids = past length",
            "tensor parallel: every rank gets the same inputs and returns the same full-vocab logits",
        ],
    )
