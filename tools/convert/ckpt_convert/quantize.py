"""``ckpt-convert hf --qformat fp8|int8_sq|int4_awq [--kv_cache_dtype int8|fp8]``: quantize with NVIDIA ModelOpt.

Pre-flight first (nothing heavy is imported or loaded before it passes): the flags, the architecture, the layout
(tp/pp, AWQ block size dividing every per-rank input size), the output directory, the disk, the calibration text
and tokenizer. Then ModelOpt's own ``mtq.quantize`` calibrates the float32 model (batch size 1, one sample per
paragraph of the calibration text) and its own exporter writes it into a staging directory beside the output:
``export_tensorrt_llm_checkpoint`` at tp 1 where ModelOpt exports the architecture (LLaMA family, GPT-2), resharded by
``ckptfmt.reshard``; else ``export_hf_checkpoint`` (OPT), imported by ``modelopt_import``. The model is in memory:
see ``quant_options.PEAK_MEMORY``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import shutil
import sys
from pathlib import Path

from ckptfmt import CheckpointConfig, CheckpointError, model_spec
from ckptfmt.constants import CONFIG_FILE
from ckptfmt.io import check_output_dir
from ckptfmt.reshard import ReshardSummary

from .modelopt_import import (
    ModelOptQuant,
    check_layout,
    import_hf_export,
    reshard_into,
    staging_dir,
    target_config,
)

# model_type -> ModelOpt's TensorRT-LLM decoder type (None: ModelOpt exports only the HF form; we import that)
DECODER_TYPES: dict[str, str | None] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen",
    "gpt2": "gpt",
    "opt": None,
}
QUANT_ALGOS = {"fp8": "FP8", "int8_sq": "W8A8_SQ_PER_CHANNEL", "int4_awq": "W4A16_AWQ"}
SEED = 1234  # calibration is deterministic on the CPU; the seed pins anything random in ModelOpt's algorithms
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def check_flags(args: argparse.Namespace) -> None:
    if args.smoothquant is not None:  # convert_checkpoint.py's spelling of int8_sq, with its alpha
        if args.qformat not in (None, "int8_sq"):
            raise CheckpointError(f"--smoothquant: is INT8 SmoothQuant, not --qformat {args.qformat}")
        if not 0.0 <= args.smoothquant <= 1.0:
            raise CheckpointError(f"--smoothquant: ALPHA must be within [0, 1] (got {args.smoothquant})")
        args.qformat = "int8_sq"
    for flag in ("per_token", "per_channel"):
        if getattr(args, flag) and args.qformat != "int8_sq":
            raise CheckpointError(f"--{flag}: applies only with --qformat int8_sq (or --smoothquant)")
    if args.per_token and not per_channel_weights(args):
        raise CheckpointError(
            "--per_token: with --smoothquant needs --per_channel (per-tensor weights with per-token inputs, "
            "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN, are computed by no executor here)"
        )
    if args.kv_cache_dtype and not args.qformat:
        raise CheckpointError(f"--kv_cache_dtype {args.kv_cache_dtype}: applies only with --qformat")
    for flag in ("calib_size", "calib_max_seq_length", "awq_block_size"):
        if getattr(args, flag) < 1:
            raise CheckpointError(f"--{flag}: must be >= 1 (got {getattr(args, flag)})")
    if args.qformat != "int4_awq" and args.awq_block_size != 128:
        raise CheckpointError(f"--awq_block_size {args.awq_block_size}: applies only with --qformat int4_awq")


def per_channel_weights(args: argparse.Namespace) -> bool:
    """INT8 SmoothQuant's weight scales per output channel: always for ``--qformat int8_sq`` (ModelOpt's preset),
    with ``--smoothquant`` only under ``--per_channel`` (convert_checkpoint.py's meaning; else one per tensor)."""
    return args.qformat == "int8_sq" and (args.smoothquant is None or args.per_channel)


def preflight(model_dir: Path, args: argparse.Namespace) -> tuple[CheckpointConfig, str | None, list[list[int]]]:
    """Everything checkable before calibration: (target config, ModelOpt decoder type, calibration token ids)."""
    from .hf import model_config

    check_flags(args)
    unquantized, hf, arch = model_config(model_dir)
    if hf.model_type not in DECODER_TYPES:
        raise CheckpointError(
            f"{hf.path}: model_type {hf.model_type!r} cannot be quantized here "
            f"(--qformat supports {', '.join(sorted(DECODER_TYPES))})"
        )
    decoder = DECODER_TYPES[hf.model_type]
    if args.kv_cache_dtype == "int8" and decoder is None:
        raise CheckpointError(
            f"--kv_cache_dtype int8: ModelOpt writes an INT8 KV cache only in its TensorRT-LLM export, which has no "
            f"{hf.model_type} decoder (use --kv_cache_dtype fp8)"
        )
    if decoder is None and args.qformat == "int8_sq" and not per_channel_weights(args):
        raise CheckpointError(
            f"--smoothquant without --per_channel: {hf.model_type} is exported in ModelOpt's HF form, whose q, k and "
            "v keep a weight scale each, which one per-tensor qkv scale cannot hold (add --per_channel)"
        )
    if args.dtype == "float32":  # ModelOpt's TensorRT-LLM export writes float16 whatever it is asked
        raise CheckpointError("--dtype float32: a quantized checkpoint is written in float16 or bfloat16")
    if args.dtype == "auto" and hf.dtype not in ("float16", "bfloat16"):
        args.dtype = "float16"  # the unquantized tensors of a float32 (or unknown) source
    quant = ModelOptQuant(
        hf.path,
        QUANT_ALGOS[args.qformat],
        args.kv_cache_dtype.upper() if args.kv_cache_dtype else None,
        args.awq_block_size if args.qformat == "int4_awq" else None,
        ["lm_head"],
    )
    section = quant.quant_config()
    if args.qformat == "int8_sq":  # the same tensors; per-token: dynamic input scales; per tensor: weight scales [1]
        section.per_token, section.per_channel = args.per_token, per_channel_weights(args)
    config, _ = target_config(unquantized, args, hf.dtype, arch.tied(hf), section)
    check_layout(config, f"--qformat {args.qformat}")
    if args.qformat == "int4_awq":  # ModelOpt quantizes the full weights: the block must divide them at tp 1 too
        check_layout(config.with_mapping(1, 1), f"--awq_block_size {args.awq_block_size}")
    check_output_dir(args.output_dir, args.overwrite, [model_dir])
    check_disk(config, Path(args.output_dir))
    return config, decoder, calibration_ids(model_dir, args, config)


def check_disk(config: CheckpointConfig, output: Path) -> None:
    """Room for the staged export and the output (each at most the model in its dtype)."""
    spec = model_spec(config)
    params = spec.vocab_size * spec.hidden_size * 2 + config.num_hidden_layers * (
        (spec.q_size + 2 * spec.kv_size) * spec.hidden_size
        + spec.q_size * spec.hidden_size
        + 3 * spec.hidden_size * spec.intermediate_size
    )
    need = 2 * params * BYTES.get(config.dtype, 4)
    parent = next(p for p in (output, *output.parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if free < need:
        raise CheckpointError(
            f"{parent}: {free / 1e9:.1f} GB free, quantizing this model needs about {need / 1e9:.1f} GB"
        )


def calibration_ids(model_dir: Path, args: argparse.Namespace, config: CheckpointConfig) -> list[list[int]]:
    """Up to --calib_size samples, one per paragraph of --calib_dataset, cut at --calib_max_seq_length and the
    model's positions. Token ids from the model's tokenizer, or the UTF-8 bytes where the directory has none."""
    from .hf import tokenizer_files

    path = Path(args.calib_dataset)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the calibration text ({err})") from None
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()][: args.calib_size]
    if not paragraphs:
        raise CheckpointError(f"{path}: no calibration text (paragraphs are separated by blank lines)")
    length = min(args.calib_max_seq_length, config.max_position_embeddings or args.calib_max_seq_length)
    if tokenizer_files(model_dir):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return [list(tokenizer(p)["input_ids"])[:length] for p in paragraphs]
    samples = [list(p.encode("utf-8"))[:length] for p in paragraphs]
    if (top := max(max(s) for s in samples)) >= config.vocab_size:
        raise CheckpointError(
            f"{model_dir}: no tokenizer files, and the calibration text's byte {top} is beyond the vocab "
            f"({config.vocab_size}); add the model's tokenizer files"
        )
    return samples


def quant_config(
    qformat: str, kv: str | None, block: int, alpha: float | None = None, per_tensor_weights: bool = False
) -> dict:
    """ModelOpt's preset for ``qformat`` with the AWQ block size, SmoothQuant's ``alpha`` (None: the preset's) and
    weight scales (``per_tensor_weights``: one a tensor instead of one a channel), and the KV-cache quantizers (8
    bits or e4m3)."""
    import modelopt.torch.quantization as mtq

    presets = {"fp8": mtq.FP8_DEFAULT_CFG, "int8_sq": mtq.INT8_SMOOTHQUANT_CFG, "int4_awq": mtq.INT4_AWQ_CFG}
    cfg = copy.deepcopy(presets[qformat])
    if alpha is not None:
        cfg["algorithm"] = {"method": "smoothquant", "alpha": alpha}
    for entry in cfg["quant_cfg"]:
        if qformat == "int4_awq" and entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["block_sizes"][-1] = block
        if per_tensor_weights and entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["axis"] = None
    if kv:
        bits = 8 if kv == "int8" else (4, 3)
        cfg["quant_cfg"] = [
            *cfg["quant_cfg"],
            {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": bits, "axis": None}},
        ]
    return cfg


def quantized_model(model_dir: Path, args: argparse.Namespace, samples: list[list[int]]):
    """The float32 model quantized and calibrated by ModelOpt (on a GPU when present)."""
    try:
        import modelopt.torch.quantization as mtq
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as err:
        raise CheckpointError(f"--qformat needs NVIDIA ModelOpt: pip install 'ckpt-convert[quant]' ({err})") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = modelopt_step("load", AutoModelForCausalLM.from_pretrained, model_dir, dtype=torch.float32)
    model = model.eval().to(device)
    model.config.architectures = [type(model).__name__]

    def forward_loop(m) -> None:
        with torch.no_grad():
            for ids in samples:
                m(torch.tensor([ids], dtype=torch.long, device=device))

    torch.manual_seed(SEED)
    per_tensor = args.qformat == "int8_sq" and not per_channel_weights(args)
    config = quant_config(args.qformat, args.kv_cache_dtype, args.awq_block_size, args.smoothquant, per_tensor)
    return modelopt_step("quantize", mtq.quantize, model, config, forward_loop)


def modelopt_step(name: str, function, *args, **kwargs):
    """A ModelOpt call whose failure (its asserts included) is one line naming the step."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress prints; stdout ends with our summary only
            return function(*args, **kwargs)
    except (AssertionError, ValueError, TypeError, RuntimeError, ArithmeticError, KeyError, IndexError) as err:
        raise CheckpointError(f"ModelOpt {name} failed: {type(err).__name__}: {err}") from None


def quantize_and_convert(model_dir: Path, args: argparse.Namespace) -> ReshardSummary:
    config, decoder, samples = preflight(model_dir, args)
    return export_and_import(quantized_model(model_dir, args, samples), model_dir, config, decoder, args)


def export_and_import(model, model_dir: Path, config: CheckpointConfig, decoder: str | None, args) -> ReshardSummary:
    """ModelOpt's export of the quantized ``model`` (staged beside the output), then our checkpoint from it."""
    import torch

    from .hf import model_config, tokenizer_files

    dtype = getattr(torch, config.dtype)
    tokenizer = tokenizer_files(model_dir)
    with staging_dir(Path(args.output_dir)) as staging:
        export = staging / "export"
        if decoder is None:
            from modelopt.torch.export import export_hf_checkpoint

            modelopt_step("export_hf_checkpoint", export_hf_checkpoint, model, dtype=dtype, export_dir=export)
            return import_hf_export(export, config, model_config(model_dir)[2].table, args, tokenizer)
        from modelopt.torch.export import export_tensorrt_llm_checkpoint

        modelopt_step(
            "export_tensorrt_llm_checkpoint",
            export_tensorrt_llm_checkpoint,
            model,
            decoder,
            dtype=dtype,
            export_dir=export,
            inference_tensor_parallel=1,
            inference_pipeline_parallel=1,
        )
        for rel, path in tokenizer.items():
            (export / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, export / rel)
        # our config at tp 1 replaces ModelOpt's, whose fallback (no tensorrt_llm installed) omits e.g. rotary_base
        # of transformers 5 configs; the quantization section is the same (quant_algo, kv, group, exclude_modules)
        staged = config.with_mapping(1, 1)
        staged.use_parallel_embedding = True  # as ModelOpt wrote the rank file (at tp 1 it changes no tensor)
        staged.save(export / CONFIG_FILE)
        return reshard_into(export, config, args)
