"""The engine directory shared by the builder and the evaluator: ``config.json``, ``rank{N}.engine``, manifest.

``config.json`` = ``{"version", "pretrained_config", "build_config", "io", "bound_to"}``:

- ``pretrained_config``: the checkpoint's config, as written by the checkpoint;
- ``build_config``: the limits the engines were built for, and the flags the user passed (``plugin_config``);
- ``io``: the I/O contract of every pipeline stage (tensor names, dtypes, shapes with named dynamic dims,
  meaning), the KV-cache layout and the output/input alias pairs;
- ``bound_to``: the TensorRT module and version that built the plans and the compute capabilities targeted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import CheckpointConfig
from .constants import CONFIG_FILE, ENGINE_FILE
from .errors import CheckpointError
from .io import read_json_file, verify_manifest

ENGINE_FORMAT_VERSION = "ckpt-engine/1"
IO_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "int8", "bool")

# Tensor names of the ckpt-engine/1 I/O contract (written by the builder, read by the evaluator)
INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
LAST_TOKEN_INDEX = "last_token_index"
HIDDEN_IN = "hidden_states_input"
HIDDEN_OUT = "hidden_states_output"
LOGITS = "logits"
KEY_IN, VALUE_IN = "past_key_{layer}", "past_value_{layer}"
KEY_OUT, VALUE_OUT = "present_key_{layer}", "present_value_{layer}"
CACHE_AXES = ["batch", "kv_heads", "max_seq_len", "head_size"]
STEP_INPUTS = (INPUT_IDS, HIDDEN_IN, POSITION_IDS, LAST_TOKEN_INDEX)  # besides the KV caches, nothing else
STEP_OUTPUTS = (LOGITS, HIDDEN_OUT)  # besides the updated KV caches (outputs aliasing their inputs)


@dataclass
class IoTensor:
    """One engine input or output. ``shape`` entries are ints or names of dims in ``IoContract.dims``."""

    name: str
    dtype: str
    shape: list[int | str]
    meaning: str = ""
    alias_of: str | None = None  # outputs only: the input whose buffer this output shares

    def concrete_shape(self, dims: dict[str, int]) -> tuple[int, ...]:
        """The shape with named dims replaced by ``dims`` values."""
        return tuple(d if isinstance(d, int) else dims[d] for d in self.shape)


@dataclass
class StageIo:
    """The inputs and outputs of the engines of one pipeline stage (every tp rank of it)."""

    pp_rank: int
    layers: list[int]  # global indices of the decoder layers this stage holds
    inputs: list[IoTensor]
    outputs: list[IoTensor]

    def tensor(self, name: str) -> IoTensor:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def aliases(self) -> dict[str, str]:
        """output name -> input name for every output that shares its input's buffer (KV caches)."""
        return {t.name: t.alias_of for t in self.outputs if t.alias_of}

    def contract_problems(self, kv: KvCacheLayout, first: bool, last: bool, gathers_last: bool = True) -> list[str]:
        """What breaks the ckpt-engine/1 step contract: the step inputs and outputs a stage must have and no
        others, one aliased cache per key/value of each of its layers with the alias's dtype and shape.
        ``gathers_last``: the last stage returns the last token's logits (it then takes ``last_token_index``)."""
        targets = set(self.aliases().values())
        caches = [t for t in self.inputs if t.name in targets]
        steps = [t for t in self.inputs if t.name not in targets]
        out = []
        for t in steps:
            if kv_layer_of(kv, t.name) is not None:
                out.append(f"KV cache input {t.name!r} has no output aliasing it (its updated cache)")
            elif t.name not in STEP_INPUTS:
                out.append(f"input {t.name!r} is not in the contract (step inputs: {', '.join(STEP_INPUTS)})")
        names = {t.name for t in steps}
        needed = [INPUT_IDS if first else HIDDEN_IN, POSITION_IDS] + (
            [LAST_TOKEN_INDEX] if last and gathers_last else []
        )
        stage_kind = f"a {'first' if first else 'later'} {'and last ' if last else ''}stage"
        out += [f"input {name!r} is missing ({stage_kind} needs it)" for name in needed if name not in names]
        plain = [t for t in self.outputs if not t.alias_of]
        out += [
            f"output {t.name!r} is neither {' nor '.join(STEP_OUTPUTS)} nor an aliased KV cache"
            for t in plain
            if t.name not in STEP_OUTPUTS
        ]
        want = LOGITS if last else HIDDEN_OUT
        if want not in {t.name for t in plain}:
            out.append(f"output {want!r} is missing")
        by_name = {t.name: t for t in self.inputs}
        for o in self.outputs:
            cache = by_name.get(o.alias_of or "")
            if cache is not None and (o.dtype, o.shape) != (cache.dtype, cache.shape):
                out.append(
                    f"output {o.name!r} aliases {cache.name!r} but their dtype/shape differ "
                    f"({o.dtype}{o.shape} vs {cache.dtype}{cache.shape})"
                )
        for cache in caches:
            if (
                len(cache.shape) != 4
                or cache.shape[0] != "batch"
                or not all(isinstance(d, int) for d in cache.shape[1:])
            ):
                out.append(
                    f"KV cache {cache.name!r}: shape {cache.shape} is not [batch, kv_heads, max_seq_len, head_size] "
                    "with static sizes"
                )
            elif kv_layer_of(kv, cache.name) is None:
                out.append(f"KV cache {cache.name!r}: name does not follow {kv.key_input!r} / {kv.value_input!r}")
        expected = {t.format(layer=i) for i in self.layers for t in (kv.key_input, kv.value_input)}
        missing = sorted(expected - {c.name for c in caches})
        if missing:
            out.append(f"no aliased KV cache {missing[0]!r} for layer {kv_layer_of(kv, missing[0])} of this stage")
        return out


@dataclass
class KvCacheLayout:
    """Per layer one key and one value cache ``[batch, kv_heads, max_seq_len, head_size]`` (``axes``)."""

    axes: list[str]
    kv_heads_per_rank: int
    head_size: int
    max_seq_len: int
    dtype: str
    key_input: str  # name templates with a ``{layer}`` slot (global layer index)
    value_input: str
    key_output: str
    value_output: str


def kv_layer_of(kv: KvCacheLayout, name: str) -> int | None:
    """The layer index in a cache input name made from the layout's templates, else None."""
    for template in (kv.key_input, kv.value_input):
        prefix, _, suffix = template.partition("{layer}")
        middle = name[len(prefix) : len(name) - len(suffix)] if len(name) > len(prefix) + len(suffix) else ""
        if name.startswith(prefix) and name.endswith(suffix) and middle.isdigit():
            return int(middle)
    return None


@dataclass
class IoContract:
    dims: dict[str, list[int]]  # dim name -> [min, max]
    kv_cache: KvCacheLayout
    stages: list[StageIo]
    notes: list[str] = field(default_factory=list)

    def stage(self, pp_rank: int) -> StageIo:
        return self.stages[pp_rank]


@dataclass
class BuildConfig:
    max_batch_size: int
    max_input_len: int
    max_output_len: int
    max_seq_len: int
    max_beam_width: int = 1
    max_num_tokens: int | None = None
    logits_dtype: str = "float32"
    gather_last_token_logits: bool = True
    plugin_config: dict[str, Any] = field(default_factory=dict)  # what the user asked for, recorded
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BoundTo:
    """What the plans can run on: the TensorRT module that built them and the targeted GPUs."""

    module: str  # "tensorrt" | "tensorrt_rtx"
    module_version: str
    compute_capabilities: list[str]  # e.g. ["sm80", "sm86"]; the local GPU for full TensorRT
    builder: str
    builder_version: str


@dataclass
class EngineConfig:
    pretrained_config: dict
    build_config: BuildConfig
    io: IoContract
    bound_to: BoundTo
    version: str = ENGINE_FORMAT_VERSION

    @property
    def checkpoint_config(self) -> CheckpointConfig:
        return CheckpointConfig.from_dict(self.pretrained_config)

    @property
    def world_size(self) -> int:
        return self.checkpoint_config.mapping.world_size

    def stage_of_rank(self, rank: int) -> StageIo:
        return self.io.stage(self.checkpoint_config.mapping.pp_rank(rank))

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "pretrained_config": self.pretrained_config,
            "build_config": asdict(self.build_config),
            "io": asdict(self.io),
            "bound_to": asdict(self.bound_to),
        }

    @classmethod
    def from_dict(cls, src: dict, source: str = CONFIG_FILE) -> EngineConfig:
        """Parse and check; any problem raises one ``CheckpointError`` naming the field."""
        if not isinstance(src, dict):
            raise CheckpointError(f"{source}: top level must be a JSON object")
        for key in ("version", "pretrained_config", "build_config", "io", "bound_to"):
            if key not in src:
                raise CheckpointError(f"{source}: {key}: missing (not an engine directory built by ckpt-build?)")
        if src["version"] != ENGINE_FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: version: unsupported {src['version']!r} (expected "
                f"{ENGINE_FORMAT_VERSION!r}); rebuild the engines with this ckpt-build"
            )
        try:
            io = src["io"]
            contract = IoContract(
                dims={k: list(v) for k, v in io["dims"].items()},
                kv_cache=KvCacheLayout(**io["kv_cache"]),
                stages=[
                    StageIo(
                        pp_rank=s["pp_rank"],
                        layers=list(s["layers"]),
                        inputs=[IoTensor(**t) for t in s["inputs"]],
                        outputs=[IoTensor(**t) for t in s["outputs"]],
                    )
                    for s in io["stages"]
                ],
                notes=list(io.get("notes", [])),
            )
            config = cls(
                pretrained_config=src["pretrained_config"],
                build_config=BuildConfig(**src["build_config"]),
                io=contract,
                bound_to=BoundTo(**src["bound_to"]),
                version=src["version"],
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{source}: malformed engine config ({type(err).__name__}: {err})") from None
        config.check(source)
        return config

    def check(self, source: str = CONFIG_FILE) -> EngineConfig:
        """Raise a one-line ``CheckpointError`` on the first inconsistency."""
        ckpt = CheckpointConfig.from_dict(self.pretrained_config).check(f"{source}: pretrained_config")
        b = self.build_config
        for name in ("max_batch_size", "max_input_len", "max_output_len", "max_seq_len"):
            if not isinstance(getattr(b, name), int) or getattr(b, name) < 1:
                raise CheckpointError(f"{source}: build_config.{name}: must be an integer >= 1")
        if b.max_seq_len < b.max_input_len:
            raise CheckpointError(f"{source}: build_config.max_seq_len: {b.max_seq_len} < max_input_len")
        if len(self.io.stages) != ckpt.mapping.pp_size:
            raise CheckpointError(
                f"{source}: io.stages: {len(self.io.stages)} stages for pp_size {ckpt.mapping.pp_size}"
            )
        for stage in self.io.stages:
            names = [t.name for t in stage.inputs + stage.outputs]
            if len(names) != len(set(names)):
                raise CheckpointError(f"{source}: io.stages[{stage.pp_rank}]: duplicate tensor names")
            for t in stage.inputs + stage.outputs:
                if t.dtype not in IO_DTYPES:
                    raise CheckpointError(f"{source}: io tensor {t.name}: unknown dtype {t.dtype!r}")
                bad = [d for d in t.shape if not isinstance(d, int) and d not in self.io.dims]
                if bad:
                    raise CheckpointError(f"{source}: io tensor {t.name}: unknown dim {bad[0]!r}")
            for out, inp in stage.aliases().items():
                if inp not in {t.name for t in stage.inputs}:
                    raise CheckpointError(f"{source}: io tensor {out}: aliases unknown input {inp!r}")
            last = stage.pp_rank == len(self.io.stages) - 1
            gathers = self.build_config.gather_last_token_logits
            problems = stage.contract_problems(self.io.kv_cache, stage.pp_rank == 0, last, gathers)
            if problems:
                raise CheckpointError(f"{source}: io.stages[{stage.pp_rank}]: {problems[0]}")
        return self

    def save(self, directory: str | os.PathLike) -> None:
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def load_engine_config(directory: str | os.PathLike) -> EngineConfig:
    """Read and check an engine directory's ``config.json``."""
    from .kinds import ENGINE_DIRECTORY, wrong_kind_message

    d = Path(directory)
    p = d / CONFIG_FILE
    wrong = wrong_kind_message(d, ENGINE_DIRECTORY)
    src = read_json_file(p, missing=wrong or f"{p}: missing (not an engine directory?)")
    if wrong and not (isinstance(src, dict) and "build_config" in src):
        raise CheckpointError(wrong)
    return EngineConfig.from_dict(src, str(p))


def check_engine_dir(directory: str | os.PathLike, hash_files: bool = False) -> EngineConfig:
    """Config valid, one ``rank{N}.engine`` per rank, manifest consistent; else one ``CheckpointError``."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory")
    config = load_engine_config(d)
    for rank in range(config.world_size):
        path = d / ENGINE_FILE.format(rank=rank)
        if not path.is_file() or path.stat().st_size == 0:
            raise CheckpointError(f"{path}: missing or empty engine file")
    problems = verify_manifest(d, hash_files=hash_files)
    if problems:
        raise CheckpointError(problems[0])
    return config
