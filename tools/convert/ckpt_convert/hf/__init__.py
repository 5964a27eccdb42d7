"""``ckpt-convert hf``: a local HuggingFace transformers directory -> checkpoint.

Importing this module (to parse the command line) loads no numpy: the converter's modules are imported
when a conversion runs (``tests/convert/test_startup.py``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptfmt import TOKENIZER_DIR, CheckpointConfig, CheckpointError
from ckptfmt.entry import import_holding_signals

from .. import options, quant_options

if TYPE_CHECKING:
    from ..stream import Summary
    from .architectures import ARCHITECTURES, HFArchitecture
    from .hf_config import HFConfig

DESCRIPTION = "HuggingFace transformers directory (config.json + safetensors or pytorch_model*.bin)"
# carried into <output_dir>/tokenizer/ so that evaluation finds the model's tokenizer with the checkpoint
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
)


_DERIVED_ERRORS: dict[type[Exception], str] = {
    ZeroDivisionError: "a count is zero",
    OverflowError: "a number is too large",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_dir",
        required=True,
        help="HuggingFace model directory (also a ModelOpt quantized export: its HF or TensorRT-LLM form)",
    )
    options.add_arguments(parser)
    quant_options.add_arguments(parser)


def model_config(
    model_dir: str | Path, quantized_ok: bool = False
) -> tuple[CheckpointConfig, HFConfig, HFArchitecture]:
    """The checkpoint config (tp 1, pp 1, source dtype, unquantized) that describes the HF model in ``model_dir``."""
    from ..quantized import check_not_quantized
    from .architectures import architecture_of
    from .hf_config import HFConfig

    hf = HFConfig.load(model_dir)
    if not quantized_ok:  # the ModelOpt import (modelopt_import) reads the quantization itself
        check_not_quantized(hf.path.parent, hf.data)
    arch = architecture_of(hf)
    try:
        translated = arch.translate(hf)
    except (ArithmeticError, ValueError, TypeError) as err:  # e.g. zero heads: hidden_size // 0
        raise CheckpointError(
            f"{hf.path}: inconsistent values ({_DERIVED_ERRORS.get(type(err), type(err).__name__)}: {err}); "
            "check the head counts and sizes in config.json"
        ) from None
    fields = {k: v for k, v in translated.items() if v is not None or k == "max_position_embeddings"}
    fields["dtype"] = hf.dtype if hf.dtype in ("float32", "float16", "bfloat16") else "float16"
    config = CheckpointConfig.from_dict(fields)
    config.check(str(hf.path))
    return config, hf, arch


def convert_hf(model_dir: str | Path, args: argparse.Namespace) -> Summary:
    """Convert with the shared conversion flags in ``args`` (see ``options.add_arguments``)."""
    from ..stream import convert_checkpoint
    from .files import open_hf_source

    model_config_, hf, arch = model_config(model_dir)
    config, warnings = options.apply_arguments(model_config_, args, hf.dtype, arch.tied(hf))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    opener = functools.partial(open_hf_source, Path(model_dir))
    return convert_checkpoint(
        opener,
        arch.table,
        config,
        args.output_dir,
        overwrite=args.overwrite,
        workers=args.workers,
        quiet=args.quiet,
        label=str(model_dir),
        inputs=[Path(model_dir)],
        extra_files=tokenizer_files(Path(model_dir)),
    )


def tokenizer_files(model_dir: Path) -> dict[str, Path]:
    """Tokenizer files to carry into the output; one that is a link out of the model directory is refused."""
    from .files import inside

    return {
        f"{TOKENIZER_DIR}/{name}": inside(model_dir, model_dir / name, "a tokenizer file")
        for name in TOKENIZER_FILES
        if (model_dir / name).is_file()
    }


def run(args: argparse.Namespace) -> int:
    import_holding_signals(("numpy", "ckpt_convert.stream", "ckpt_convert.modelopt_import"))  # Ctrl-C held meanwhile
    from ..modelopt_import import convert_quantized

    line = convert_quantized(args)  # --qformat, or a ModelOpt export; None for a plain HF model
    if line is None:
        line = convert_hf(args.model_dir, args).line(args.output_dir)
    if not args.quiet:
        print(line)
    return 0


def __getattr__(name: str) -> Any:
    """``ARCHITECTURES`` loads the architecture tables on first use."""
    if name == "ARCHITECTURES":
        return importlib.import_module(".architectures", __name__).ARCHITECTURES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCHITECTURES", "DESCRIPTION", "add_arguments", "convert_hf", "model_config", "run"]
