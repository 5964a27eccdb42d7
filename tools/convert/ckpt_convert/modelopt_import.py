"""Import NVIDIA ModelOpt quantized exports, both forms, into a checkpoint at any ``--tp_size`` / ``--pp_size``.

- HF form (``export_hf_checkpoint``: ``hf_quant_config.json`` / ``quantization_config.quant_method: modelopt``):
  the architecture's table made quantized (``modelopt_tables``) writes the model at tp 1 into a staging directory
  beside ``--output_dir``, one tensor at a time; ``ckptfmt.reshard`` then writes the requested layout.
- TensorRT-LLM form (``export_tensorrt_llm_checkpoint``: ``config.json`` with ``architecture`` + rank files):
  ``ckptfmt.reshard`` straight to the requested layout (ModelOpt's own tp 2 / pp 2 exports are what it writes).

Both are checked before anything is written where names and headers allow (quant_algo, every scale present with
its shape, group size against the layout, the output directory); values (finite, positive scales) while staging.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptfmt import DTYPES, CheckpointConfig, CheckpointError, QuantConfig, RankFileWriter, expected_tensors
from ckptfmt.constants import CONFIG_FILE, RANK_FILE
from ckptfmt.io import check_output_dir
from ckptfmt.names import LINEAR_SCALES
from ckptfmt.reshard import ReshardSummary, reshard, resharded_config

from . import options
from .modelopt_tables import BadSource, quantized_table
from .producer import resolve_sources
from .quantized import HF_QUANT_CONFIG, QUANT_ALGOS
from .sources import TensorSource

# ModelOpt quant_algo -> ckptfmt scheme, for what is imported; other algorithms are refused naming the field
IMPORTED_ALGOS = {"FP8": "fp8", "W8A8_SQ_PER_CHANNEL": "int8_sq", "W4A16_AWQ": "int4_awq"}
IMPORTED_KV = {"FP8": "fp8", "INT8": "int8"}
SCALE_ENDINGS = ("_scale", *LINEAR_SCALES, "cache_scaling_factor")


@dataclass(frozen=True)
class ModelOptQuant:
    """What a ModelOpt HF export says about its quantization, and the file that says it."""

    path: Path
    algo: str | None
    kv: str | None
    group_size: int | None
    exclude: list

    @property
    def scheme(self) -> str | None:
        return IMPORTED_ALGOS[self.algo] if self.algo else None

    def quant_config(self) -> QuantConfig:
        """The checkpoint's quantization section, spelled as ModelOpt's TensorRT-LLM export spells it."""
        section: dict = {"quant_algo": self.algo, "kv_cache_quant_algo": self.kv}
        if self.scheme == "int4_awq":
            section.update(group_size=self.group_size, has_zero_point=False, pre_quant_scale=True)
        section["exclude_modules"] = ["lm_head"]
        problems: list[str] = []
        quant = QuantConfig.from_dict(section, problems)
        if problems:
            raise CheckpointError(f"{self.path}: {problems[0]}")
        return quant


def read_modelopt_quant(model_dir: Path, config: dict) -> ModelOptQuant | None:
    """The quantization of a ModelOpt HF export (None: not one); unknown algorithms refused in one line."""
    path = model_dir / HF_QUANT_CONFIG
    if path.is_file():
        from .hf.files import read_json

        data = read_json(path)
        quant = data.get("quantization") if isinstance(data, dict) else None
        if not isinstance(quant, dict):
            raise CheckpointError(f"{path}: field quantization: missing or not an object")
    else:
        path, quant = model_dir / "config.json", config.get("quantization_config")
        if not isinstance(quant, dict) or str(quant.get("quant_method", quant.get("quant_library"))) != "modelopt":
            return None
    algo, kv = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
    if algo is not None and algo not in IMPORTED_ALGOS:
        what = QUANT_ALGOS.get(str(algo).upper(), "unknown algorithm")
        raise CheckpointError(
            f"{path}: field quant_algo {algo!r} ({what}) is not imported (imported: {', '.join(IMPORTED_ALGOS)})"
        )
    if kv is not None and kv not in IMPORTED_KV:
        raise CheckpointError(f"{path}: field kv_cache_quant_algo {kv!r} is not imported (imported: FP8, INT8)")
    group = quant.get("group_size", 128)
    if algo == "W4A16_AWQ" and (not isinstance(group, int) or isinstance(group, bool) or group < 1):
        raise CheckpointError(f"{path}: field group_size must be a positive integer, got {group!r}")
    if algo is None and kv is None:
        return None
    return ModelOptQuant(path, algo, kv, group if algo == "W4A16_AWQ" else None, list(quant.get("exclude_modules", [])))


def is_trtllm_export(model_dir: Path) -> bool:
    """A TensorRT-LLM checkpoint written by ModelOpt (``producer.name: modelopt``, rank files beside)."""
    from .hf.files import read_json

    path = model_dir / CONFIG_FILE
    if not path.is_file() or not (model_dir / RANK_FILE.format(rank=0)).is_file():
        return False
    data = read_json(path)
    return isinstance(data, dict) and "architecture" in data and (data.get("producer") or {}).get("name") == "modelopt"


def target_config(
    unquantized: CheckpointConfig, args: argparse.Namespace, source_dtype: str | None, tied: bool, quant: QuantConfig
) -> tuple[CheckpointConfig, list[str]]:
    """The checkpoint config at the requested layout with ``quant`` (weight-only flags refused: already quantized)."""
    for flag in ("use_weight_only", "use_embedding_sharing"):
        if getattr(args, flag):
            raise CheckpointError(f"--{flag}: does not apply to a quantized checkpoint (drop the flag)")
    config, warnings = options.apply_arguments(unquantized, args, source_dtype, tied)
    config.quantization = quant
    return config, warnings


def check_layout(config: CheckpointConfig, where: str) -> None:
    """tp/pp and the quantized layout (group size dividing every per-rank input size) before anything is written."""
    m = config.mapping
    try:
        resharded_config(config, m.tp_size, m.pp_size, config.use_parallel_embedding, config.embedding_sharding_dim)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {str(err).removeprefix('new layout: ')}") from None


def import_hf_export(
    model_dir: Path, config: CheckpointConfig, table, args: argparse.Namespace, tokenizer: dict[str, Path]
) -> ReshardSummary:
    """The HF form: staged at tp 1 (checked tensor by tensor), then resharded into ``args.output_dir``."""
    from .hf.files import open_hf_source

    check_layout(config, str(model_dir))
    check_output_dir(args.output_dir, args.overwrite, [model_dir])
    scheme, kv = config.quantization.scheme, config.quantization.kv_cache
    qtable = quantized_table(table, None if scheme == "none" else scheme, kv)
    staging_config = config.with_mapping(1, 1)
    staging_config.use_parallel_embedding = False
    staging_config.share_embedding_table = False
    with open_hf_source(model_dir) as source:
        plan = plan_tensors(qtable, source, staging_config)
        with staging_dir(Path(args.output_dir)) as staging:
            write_staging(staging, plan, qtable, source, staging_config, tokenizer)
            return reshard_into(staging, config, args)


def plan_tensors(table, source: TensorSource, config: CheckpointConfig) -> dict[str, list[str]]:
    """Canonical tensor -> the source names it reads; every source tensor must be used (scales included)."""
    plan: dict[str, list[str]] = {}
    for name, spec in expected_tensors(config, 0).items():
        try:
            plan[name] = resolve_sources(table, source, name)[1]
        except CheckpointError:
            if not spec.optional:
                raise
    used = {n for names in plan.values() for n in names}
    unused = [n for n in source.names() if n not in used and not table.ignored(n)]
    if unused:
        raise CheckpointError(
            f"source weights: tensor {unused[0]} is not used by the import of this quantized export "
            f"({len(unused)} unused; a scale of a mode the config does not declare?)"
        )
    return plan


def write_staging(staging: Path, plan, table, source: TensorSource, config: CheckpointConfig, tokenizer) -> None:
    """The model at tp 1 in ``staging``: every tensor made, shape-checked and written, scales finite and > 0."""
    specs = expected_tensors(config, 0)
    spec_of = {n: specs[n] for n in plan}
    dtypes = {n: DTYPES.get(s.dtype) or np.dtype(s.dtype) for n, s in spec_of.items()}
    writer = RankFileWriter(staging / RANK_FILE.format(rank=0), {n: (dtypes[n], spec_of[n].shape) for n in plan})
    model = config.with_mapping(1, 1)
    from ckptfmt import model_spec

    mspec = model_spec(model)
    for name, names in plan.items():
        lazy = [source.get(n) for n in names]
        arrays = [t.load() for t in lazy]
        for t, a in zip(lazy, arrays, strict=True):
            if t.name.endswith(SCALE_ENDINGS) and a.dtype.kind == "f" and not (np.isfinite(a).all() and (a > 0).all()):
                raise CheckpointError(f"{t.file}: tensor {t.name}: scale values must be finite and > 0")
        rule, _ = table.rule_for(name)
        try:
            out = rule.transform(arrays, mspec)
        except BadSource as err:
            raise CheckpointError(f"{lazy[err.index].file}: tensor {lazy[err.index].name}: {err}") from None
        except ValueError:
            out = None
        want = spec_of[name].shape
        if out is None or tuple(np.shape(out)) != tuple(want):
            shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in lazy)
            raise CheckpointError(f"{lazy[0].file}: {shapes} does not match config.json ({name} needs {list(want)})")
        out = np.asarray(out)
        writer.write(name, out if out.dtype == dtypes[name] else out.astype(dtypes[name]))
    writer.close()
    for rel, path in tokenizer.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, staging / rel)
    config.save(staging / CONFIG_FILE)


class staging_dir:
    """A hidden directory beside the output (same disk), always removed."""

    def __init__(self, output: Path):
        self.output = output

    def __enter__(self) -> Path:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.staging-", dir=self.output.parent))
        return self.path

    def __exit__(self, *_) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def reshard_into(src: Path, config: CheckpointConfig, args: argparse.Namespace) -> ReshardSummary:
    m = config.mapping
    return reshard(
        src,
        args.output_dir,
        m.tp_size,
        m.pp_size,
        overwrite=args.overwrite,
        verify=False,
        use_parallel_embedding=config.use_parallel_embedding,
        embedding_sharding_dim=config.embedding_sharding_dim,
    )


def import_trtllm_export(model_dir: Path, args: argparse.Namespace) -> ReshardSummary:
    """ModelOpt's TensorRT-LLM form, resharded to the requested layout (its dtype and quantization as they are)."""
    from ckptfmt import load_config

    source = load_config(model_dir)
    for flag, value in (("--use_weight_only", args.use_weight_only), ("--use_embedding_sharing", False)):
        if value:
            raise CheckpointError(f"{flag}: does not apply to a TensorRT-LLM checkpoint, which is resharded as it is")
    if args.dtype not in ("auto", source.dtype):
        raise CheckpointError(
            f"--dtype {args.dtype}: {model_dir} is a TensorRT-LLM checkpoint in {source.dtype}; it is resharded, "
            "not cast (drop --dtype)"
        )
    tp, pp = options.parallel_sizes(args)
    config = source.with_mapping(tp, pp)
    config.use_parallel_embedding = args.use_parallel_embedding
    config.embedding_sharding_dim = args.embedding_sharding_dim
    check_layout(config, str(model_dir))
    check_output_dir(args.output_dir, args.overwrite, [model_dir])
    return reshard_into(model_dir, config, args)


def summary_line(summary: ReshardSummary, output_dir: str) -> str:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{summary.line(output_dir)}, peak RSS {peak:.0f} MB"


def import_hf_form(model_dir: Path, quant: ModelOptQuant, args: argparse.Namespace) -> ReshardSummary:
    """A ModelOpt HF export -> checkpoint (the architecture from its config.json, as for unquantized models)."""
    from .hf import model_config, tokenizer_files

    unquantized, hf, arch = model_config(model_dir, quantized_ok=True)
    config, warnings = target_config(unquantized, args, hf.dtype, arch.tied(hf), quant.quant_config())
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return import_hf_export(model_dir, config, arch.table, args, tokenizer_files(model_dir))


def convert_quantized(args: argparse.Namespace) -> str | None:
    """``ckpt-convert hf`` for quantized work: --qformat, a ModelOpt TensorRT-LLM or HF export; the summary line,
    or None when none applies (a plain HF model: the unquantized converter)."""
    model_dir, start = Path(args.model_dir), time.monotonic()
    if args.qformat or args.kv_cache_dtype or args.smoothquant is not None or args.per_token or args.per_channel:
        from .quantize import quantize_and_convert

        summary = quantize_and_convert(model_dir, args)
    elif is_trtllm_export(model_dir):
        summary = import_trtllm_export(model_dir, args)
    elif (model_dir / CONFIG_FILE).is_file():
        from .hf.hf_config import HFConfig

        quant = read_modelopt_quant(model_dir, HFConfig.load(model_dir).data)
        if quant is None:
            return None
        summary = import_hf_form(model_dir, quant, args)
    else:
        return None
    return summary_line(dataclasses.replace(summary, seconds=time.monotonic() - start), args.output_dir)
