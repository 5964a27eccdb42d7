"""ckpt-build: TensorRT-LLM checkpoint -> engine directory, with trtllm-build's flags."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckptfmt.engine import EngineConfig

    from .builder import BuildRequest

# Heavy modules (numpy, ckptfmt, TensorRT) are imported inside the functions: a Ctrl-C while they load still
# ends in one line (run_main), not a traceback.
DESCRIPTION = (
    "Build one TensorRT(-RTX) engine per rank from a TensorRT-LLM checkpoint (config.json + rank*.safetensors) "
    "into an engine directory, written to a temporary sibling and renamed into place when complete."
)
EPILOG = (
    "Progress goes to stderr, one line per build phase (quiet with --log_level warning). Ctrl-C or SIGTERM "
    "stops the build at TensorRT's next step: exit 130/143, nothing written. Errors: one line, exit 1."
)

# plugin-style flags of trtllm-build: accepted and recorded, never required (we use native layers)
PLUGIN_FLAGS = (
    "gemm_plugin",
    "gpt_attention_plugin",
    "use_gemm_plugin",
    "use_gpt_attention_plugin",
    "context_fmha",
    "paged_kv_cache",
    "remove_input_padding",
    "strongly_typed",
)
NATIVE_NOTICE = (
    "plugin flags ({flags}) need no plugins here: engines use TensorRT's native layers "
    "(attention with a padded KV cache, matmul, normalization) and are always strongly typed"
)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default after its help when it has one (not None/False) the help does not state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckpt-build",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--checkpoint_dir", required=True, type=Path, help="input checkpoint directory")
    p.add_argument(
        "--output_dir",
        default=Path("engine_outputs"),
        type=Path,
        help="engine directory to create; refused if it exists (default: ./engine_outputs)",
    )
    p.add_argument("--max_batch_size", type=int, default=8, help="largest batch the engines accept")
    p.add_argument(
        "--max_input_len",
        type=int,
        default=None,
        help="longest prompt (default: min(1024, max_position_embeddings / 2))",
    )
    p.add_argument(
        "--max_output_len",
        type=int,
        default=None,
        help="tokens generated after the prompt (default: the rest of max_position_embeddings, 1024 without one)",
    )
    p.add_argument("--max_seq_len", type=int, default=None, help="max_input_len + max_output_len")
    p.add_argument("--max_beam_width", type=int, default=1, help="only 1 is supported")
    p.add_argument(
        "--max_num_tokens", type=int, default=None, help="recorded in the engine config (default: batch x input)"
    )
    p.add_argument(
        "--logits_dtype",
        default=None,
        choices=("float32", "float16", "bfloat16"),
        help="dtype of the logits output (default: the checkpoint's logits_dtype)",
    )
    p.add_argument(
        "--gather_all_token_logits",
        action="store_true",
        help="return logits of every token ([batch, seq, vocab]) instead of the last one's",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "tensorrt", "tensorrt_rtx"),
        help="auto: full TensorRT when importable and a GPU is present, else TensorRT-RTX",
    )
    p.add_argument(
        "--target",
        default=None,
        help="TensorRT-RTX compute capabilities, e.g. sm80,sm86,sm89,sm120 (default: every supported one)",
    )
    p.add_argument("--workers", type=int, default=1, help="build ranks in parallel processes")
    spread = p.add_mutually_exclusive_group()
    spread.add_argument(
        "--rank",
        type=int,
        default=None,
        metavar="R",
        help="build only rank R, into the staging area .NAME.ranks beside --output_dir (one task of a cluster "
        "job; --output_dir itself is written by --finalize)",
    )
    spread.add_argument(
        "--finalize",
        action="store_true",
        help="after every --rank task: check each rank is staged once, built with these flags and one TensorRT "
        "version, then publish --output_dir (config.json, manifest.json) and remove the staging area",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory written by us")
    p.add_argument(
        "--skip_checksum",
        action="store_true",
        help="do not check the checkpoint's files against the sha256 sums of its manifest.json",
    )
    p.add_argument(
        "--log_level",
        default="info",
        choices=("debug", "verbose", "info", "warning", "error", "internal_error"),
        help="info: progress lines; warning: quiet; debug/verbose: TensorRT's own messages too",
    )
    for name in (
        "gemm_plugin",
        "gpt_attention_plugin",
        "use_gemm_plugin",
        "use_gpt_attention_plugin",
        "context_fmha",
        "paged_kv_cache",
        "remove_input_padding",
    ):
        p.add_argument(f"--{name}", nargs="?", const="enable", default=None, help="accepted; native layers are used")
    p.add_argument("--strongly_typed", action="store_true", help="accepted; networks are always strongly typed")
    return p


LEVELS = {
    "debug": logging.DEBUG,
    "verbose": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "internal_error": logging.CRITICAL,
}


def main(argv: list[str] | None = None) -> int:
    """Console script: ``_main`` under ``run_main`` (Ctrl-C 130, SIGTERM 143, one line, no traceback)."""
    try:
        from ckptfmt.entry import run_main
    except KeyboardInterrupt:  # before run_main holds the signals
        print("ckpt-build: interrupted", file=sys.stderr)
        return 130
    from .interrupts import exit_code

    return exit_code(run_main(_main, argv, prog="ckpt-build"))


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=LEVELS[args.log_level], format="[ckpt-build] %(levelname)s %(message)s")
    plugins = {k: getattr(args, k) for k in PLUGIN_FLAGS if getattr(args, k) not in (None, False)}
    if plugins:
        print("ckpt-build: note: " + NATIVE_NOTICE.format(flags=", ".join(f"--{k}" for k in plugins)), file=sys.stderr)
    from ckptfmt.errors import CheckpointError

    from .builder import BuildRequest, build_engines  # after logging is set up
    from .limits import Limits

    request = BuildRequest(
        checkpoint_dir=args.checkpoint_dir,
        output_dir=args.output_dir,
        backend=args.backend,
        targets=[t.strip().lower() for t in args.target.split(",") if t.strip()] if args.target else None,
        workers=args.workers,
        overwrite=args.overwrite,
        skip_checksum=args.skip_checksum,
        stop_at_once=True,
        limits=Limits(
            max_batch_size=args.max_batch_size,
            max_input_len=args.max_input_len,
            max_output_len=args.max_output_len,
            max_seq_len=args.max_seq_len,
            max_beam_width=args.max_beam_width,
            max_num_tokens=args.max_num_tokens,
            logits_dtype=args.logits_dtype,
            gather_all_token_logits=args.gather_all_token_logits,
            plugin_config=plugins,
        ),
    )
    try:
        if args.rank is not None:
            return _staged_rank(request, args.rank)
        if args.finalize:
            return _finalized(request)
        engine = build_engines(request)
    except CheckpointError as err:
        print(f"ckpt-build: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # TensorRT refusals and OS errors: one line, no traceback
        print(
            f"ckpt-build: error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr
        )
        return 1
    print(f"built {_summary(engine, args.output_dir)}")
    return 0


def _summary(engine: EngineConfig, output_dir: Path) -> str:
    b = engine.build_config
    return (
        f"{engine.world_size} engine(s) into {output_dir} for {engine.bound_to.module} "
        f"{engine.bound_to.module_version} ({','.join(engine.bound_to.compute_capabilities)}); "
        f"max_batch_size {b.max_batch_size}, max_input_len {b.max_input_len}, max_seq_len {b.max_seq_len}"
    )


def _staged_rank(request: BuildRequest, rank: int) -> int:
    from .rank_task import build_staged_rank

    if request.workers != 1:
        print("ckpt-build: error: --workers: one rank per --rank task (drop --workers)", file=sys.stderr)
        return 1
    rec = build_staged_rank(request, rank)
    print(
        f"built rank {rank} of {rec['world_size']} into {rec['plan']} ({rec['size'] / 1e6:.1f} MB, "
        f"{rec['seconds']:.1f} s, peak RSS {rec['peak_rss_bytes'] / 1e6:.0f} MB); publish with --finalize"
    )
    return 0


def _finalized(request: BuildRequest) -> int:
    from .finalize import finalize

    engine, records = finalize(request)
    times = ", ".join(f"{rec.rank}: {rec.data['seconds']:.1f} s" for rec in records)
    print(f"finalized {_summary(engine, request.output_dir)}; rank build times {times}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
