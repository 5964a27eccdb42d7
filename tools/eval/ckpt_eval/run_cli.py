"""``ckpt-run``: generate text from a checkpoint (torch), a Hugging Face model (hf) or an engine (trt).

Flags follow TensorRT-LLM's ``examples/run.py``. Multi-rank checkpoints run under ``mpirun -n N`` or
``torchrun``; rank 0 prints. Errors are one line on stderr and exit status 1 (all ranks stop); Ctrl-C exits
130, SIGTERM 143, a closed stdout 141, without a traceback. torch and transformers are imported inside the
functions, after ``run_main`` has taken over the signals.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ckptfmt import CheckpointError
from ckptfmt.entry import run_main

from .backends import RunnerError
from .tokenizer import find_tokenizer_dir, load_tokenizer, missing_tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckpt-run", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint_dir", help="checkpoint directory (config.json + rank*.safetensors)")
    src.add_argument("--engine_dir", help="TensorRT engine directory (backend trt)")
    src.add_argument("--hf_model_dir", help="Hugging Face model directory (backend hf)")
    p.add_argument("--backend", choices=["torch", "hf", "trt"], help="default: from the directory flag")
    p.add_argument(
        "--tokenizer_dir",
        help="default: the model directory (checkpoint, engine or HF) or its tokenizer/ folder (converters copy it)",
    )
    inputs = p.add_mutually_exclusive_group()
    inputs.add_argument("--input_text", nargs="+", help="one or more prompts")
    inputs.add_argument("--input_file", help=".txt (a prompt per line), .json (list of strings) or .csv (token ids)")
    p.add_argument("--max_input_length", type=int, default=923, help="prompts keep their first N tokens")
    p.add_argument("--max_output_len", type=int, default=32, help="new tokens per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=1, help="1: greedy; 0: off")
    p.add_argument("--top_p", type=float, default=0.0, help="0: off")
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--random_seed", type=int, default=0)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--end_id", type=int, help="default: the tokenizer's eos token")
    p.add_argument("--pad_id", type=int, help="default: the tokenizer's pad token, else end_id")
    p.add_argument("--no_add_special_tokens", action="store_true", help="do not add BOS etc. when tokenizing")
    add_runner_flags(p)
    p.add_argument("--streaming", action="store_true", help="print tokens as they are generated")
    return p


def add_runner_flags(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--compile`` and ``--skip_checksum``, shared by ckpt-run and ckpt-summarize
    (see ``backend_options``)."""
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--compile",
        nargs="?",
        const="auto",
        metavar="MODE",
        help="torch backend, one rank or tensor parallel: a fast one-token decode step. MODE auto (default): fused "
        "Triton kernels where they cover the model, else torch.compile with CUDA graphs; fused: only the fused "
        "kernels; or a torch.compile mode (reduce-overhead, max-autotune, ...). Pipeline stages run eager",
    )
    p.add_argument(
        "--skip_checksum",
        action="store_true",
        help="do not check the files against the directory's manifest.json sha256 (checked in the background "
        "while the model loads; a mismatch stops the run before any output)",
    )


def backend_options(args, backend: str) -> dict:
    """``ModelRunner.from_dir`` options from the flags of ``add_runner_flags`` (``--compile``: torch only)."""
    options = {"compile": args.compile} if args.compile and backend == "torch" else {}
    if backend in ("torch", "trt"):
        options["checksums"] = not args.skip_checksum
    return options


def read_prompts(args) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, token id lists) from --input_text / --input_file; exactly one of the two is set."""
    if args.input_text:
        return args.input_text, None
    if not args.input_file:
        raise RunnerError("give prompts with --input_text or --input_file")
    path = Path(args.input_file)
    try:
        text = path.read_text()
    except OSError as err:
        raise RunnerError(f"{path}: cannot read ({err.strerror})") from None
    if path.suffix == ".json":
        try:
            texts = json.loads(text)
        except json.JSONDecodeError as err:
            raise RunnerError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RunnerError(f"{path}: expected a JSON list of strings")
        return texts, None
    if path.suffix == ".csv":
        try:
            return None, [[int(x) for x in row if x.strip()] for row in csv.reader(text.splitlines()) if row]
        except ValueError:
            raise RunnerError(f"{path}: a .csv input holds comma-separated integer token ids") from None
    return [line for line in text.splitlines() if line.strip()], None


def open_tokenizer(args, model_dir: str, needed: bool):
    """The tokenizer of ``--tokenizer_dir`` or the model directory (see ``tokenizer.find_tokenizer_dir``); None
    when none was given or found and token ids need no tokenizer."""
    directory = find_tokenizer_dir(args.tokenizer_dir, model_dir)
    if directory is None or not (needed or args.tokenizer_dir):
        if needed:
            raise missing_tokenizer(model_dir)
        return None
    return load_tokenizer(directory)


def encode(args, tokenizer, texts, ids) -> list:
    import torch

    if ids is None:
        ids = [tokenizer.encode(t, add_special_tokens=not args.no_add_special_tokens) for t in texts]
    return [torch.tensor(x[: args.max_input_length], dtype=torch.long) for x in ids]


def check_lengths(prompts: list, new_tokens: int, limit: int | None) -> None:
    """Each prompt plus ``--max_output_len`` must fit the model's positions; the error names the flags."""
    for i, p in enumerate(prompts):
        if limit and p.numel() + new_tokens > limit:
            hint = (
                f"pass --max_input_length {limit - new_tokens} or less"
                if new_tokens < limit
                else "pass a smaller --max_output_len"
            )
            raise RunnerError(
                f"prompt {i}: {p.numel()} tokens + {new_tokens} new tokens exceed the model's "
                f"max_position_embeddings {limit}; {hint}"
            )


def print_outputs(result, prompts, texts, tokenizer, only: set[int] | None = None) -> None:
    for i, p in enumerate(prompts):
        if only is not None and i not in only:
            continue
        out = result["output_ids"][i, 0, len(p) : int(result["sequence_lengths"][i, 0])].tolist()
        shown = tokenizer.decode(out, skip_special_tokens=True) if tokenizer else out
        if texts is not None:
            print(f"Input [Text {i}]: {json.dumps(texts[i])}")
        print(f"Output [Text {i} Beam 0]: {json.dumps(shown) if tokenizer else shown}", flush=True)


def stream(results, prompts, texts, tokenizer) -> None:
    """One prompt: print text as it grows. Several: print each output once its sequence has ended."""
    shown, final = "", None
    done: set[int] = set()
    previous = [len(p) for p in prompts]
    for final in results:
        lengths = [int(n) for n in final["sequence_lengths"][:, 0]]
        if len(prompts) == 1 and tokenizer is not None:
            text = tokenizer.decode(final["output_ids"][0, 0, len(prompts[0]) : lengths[0]], skip_special_tokens=True)
            if text.startswith(shown):
                print(text[len(shown) :], end="", flush=True)
                shown = text
            continue
        ended = {i for i, n in enumerate(lengths) if n == previous[i]} - done  # no new token: it met end_id
        print_outputs(final, prompts, texts, tokenizer, ended)
        done |= ended
        previous = lengths
    if len(prompts) == 1 and tokenizer is not None:
        print(flush=True)
    elif final is not None:
        print_outputs(final, prompts, texts, tokenizer, set(range(len(prompts))) - done)


def run(args) -> None:
    from .runner import ModelRunner

    backend = args.backend or ("trt" if args.engine_dir else "hf" if args.hf_model_dir else "torch")
    model_dir = args.engine_dir or args.hf_model_dir or args.checkpoint_dir
    texts, ids = read_prompts(args)
    tokenizer = open_tokenizer(args, model_dir, needed=texts is not None)
    runner = ModelRunner.from_dir(model_dir, backend=backend, device=args.device, **backend_options(args, backend))
    end_id = args.end_id if args.end_id is not None else getattr(tokenizer, "eos_token_id", None)
    pad_id = args.pad_id if args.pad_id is not None else getattr(tokenizer, "pad_token_id", None)
    prompts = encode(args, tokenizer, texts, ids)
    check_lengths(prompts, args.max_output_len, runner.max_seq_len)
    result = runner.generate(
        prompts,
        max_new_tokens=args.max_output_len,
        end_id=end_id,
        pad_id=pad_id,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        random_seed=args.random_seed,
        num_beams=args.num_beams,
        streaming=args.streaming,
        return_dict=True,
    )
    if runner.rank != 0:
        for _ in result if args.streaming else ():
            pass
        return
    if args.streaming:
        stream(result, prompts, texts, tokenizer)
    else:
        print_outputs(result, prompts, texts, tokenizer)


def main(argv: list[str] | None = None) -> int:
    """The ``ckpt-run`` console script."""
    return run_main(_main, argv, prog="ckpt-run")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except BrokenPipeError:
        raise  # run_main: quiet exit 141
    except (CheckpointError, RunnerError, OSError, RuntimeError) as err:  # RuntimeError: e.g. a peer rank died
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        from .distributed import abort, detect_launch

        if detect_launch().world_size > 1:
            abort(1)  # stop the peers too: they may be waiting in a collective
        return 1
    from .distributed import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
