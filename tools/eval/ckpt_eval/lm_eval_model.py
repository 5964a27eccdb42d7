"""Our runner as an lm-evaluation-harness model: ``--model ckpt --model_args checkpoint_dir=DIR,backend=torch``
(or ``engine_dir=DIR`` for the trt backend, ``hf_model_dir=DIR`` for the hf backend).

``loglikelihood`` and ``loglikelihood_rolling`` score tokens with ``ModelRunner.score`` (one forward pass with
context logits on torch/hf, prefill + one step per scored token on engines), ``generate_until`` generates
greedily (or sampled, per the task's generation kwargs) with ``ModelRunner.generate``; all three in batches of
``batch_size``. Tokenization follows the harness' ``hf`` model (no special tokens unless ``add_bos_token``;
an empty context is the BOS token, else EOS), so both score the same tokens.

lm-eval 0.4 finds models only in its own table, so the harness is run through ``ckpt-lm-eval`` (the
``lm_eval`` command line, unchanged, with this model registered and the tasks shipped in
``ckpt_eval/data/lm_eval_tasks`` on the include path) or, from Python, after ``import ckpt_eval.lm_eval_model``.
Bad model arguments are one ``error:`` line and exit 2.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ckptfmt import CheckpointError

from .backends import RunnerError
from .gates import EXIT_USAGE
from .tokenizer import find_tokenizer_dir, load_tokenizer, missing_tokenizer

TASKS_DIR = "lm_eval_tasks"
DIR_ARGS = {"checkpoint_dir": "torch", "engine_dir": "trt", "hf_model_dir": "hf"}
SAMPLING_KWARGS = ("temperature", "top_k", "top_p")


class HarnessArgError(RunnerError):
    """A model argument the ckpt model does not take or cannot use; one line."""


@register_model("ckpt")
class CkptLM(TemplateLM):
    """A ``ModelRunner`` behind lm-eval's ``LM`` interface."""

    def __init__(
        self,
        checkpoint_dir: str | None = None,
        engine_dir: str | None = None,
        hf_model_dir: str | None = None,
        backend: str | None = None,
        tokenizer_dir: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        dtype: str = "float32",
        add_bos_token: bool = False,
        skip_checksum: bool = False,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise HarnessArgError(
                f"--model_args: unknown argument {sorted(unknown)[0]!r} for --model ckpt (takes "
                "checkpoint_dir, engine_dir, hf_model_dir, backend, tokenizer_dir, max_length, dtype, "
                "add_bos_token, skip_checksum)"
            )
        given = {k: v for k, v in (("checkpoint_dir", checkpoint_dir), ("engine_dir", engine_dir)) if v}
        given.update({"hf_model_dir": hf_model_dir} if hf_model_dir else {})
        if len(given) != 1:
            raise HarnessArgError("--model_args: give exactly one of checkpoint_dir, engine_dir, hf_model_dir")
        ((flag, model_dir),) = given.items()
        backend = backend or DIR_ARGS[flag]
        if DIR_ARGS[flag] != backend:
            raise HarnessArgError(f"--model_args: backend={backend} does not run {flag} (it runs {DIR_ARGS[flag]})")
        self.batch_size = _positive_int(batch_size, "batch_size")
        from .runner import ModelRunner

        options = {"dtype": dtype} if backend == "hf" else {"checksums": not _flag(skip_checksum)}
        self.runner = ModelRunner.from_dir(model_dir, backend=backend, device=device, **options)
        directory = find_tokenizer_dir(tokenizer_dir, model_dir)
        if directory is None:
            raise missing_tokenizer(model_dir, "tokenizer_dir=DIR in --model_args")
        self.tokenizer = load_tokenizer(directory)
        positions = self.runner.max_seq_len or 2049
        self._max_length = _positive_int(max_length or min(2048, positions - 1), "max_length")
        if self._max_length >= positions:
            raise HarnessArgError(
                f"--model_args: max_length {self._max_length} must be below the model's {positions} positions"
            )
        self.add_bos_token = _flag(add_bos_token)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, add_special_tokens=special)

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, all greedy) of each continuation after its context, longest first in batches."""
        import torch

        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for begin in range(0, len(order), self.batch_size):
            rows = order[begin : begin + self.batch_size]
            seqs, starts = [], []
            for i in rows:
                context, continuation = pairs[i]
                whole = (context + continuation)[-(self.max_length + 1) :]
                seqs.append(torch.tensor(whole))
                starts.append(len(whole) - len(continuation))
            for i, scores in zip(rows, self.runner.score(seqs, starts)):
                out[i] = (scores.total, bool(scores.greedy.all()))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self._score([(context, continuation) for _, context, continuation in requests])
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood in disjoint windows of ``max_length`` (the harness' own windowing)."""
        windows, owner = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(text)
            for pair in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1):
                windows.append(make_disjoint_window(pair))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self._score(windows)):
            totals[index] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate per request until one of its stop strings (or EOS), at most ``max_gen_toks`` tokens; requests
        with the same generation kwargs share batches."""
        eos = self.tokenizer.decode([self.eot_token_id])
        groups: dict[str, list[int]] = {}
        settings = [generation_settings(req.args[1], eos) for req in requests]
        for i, setting in enumerate(settings):
            groups.setdefault(repr(setting), []).append(i)
        out = [""] * len(requests)
        for rows in groups.values():
            for begin in range(0, len(rows), self.batch_size):
                batch = rows[begin : begin + self.batch_size]
                texts = self._generate([requests[i].args[0] for i in batch], settings[batch[0]])
                for i, text in zip(batch, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, contexts: list[str], setting: dict) -> list[str]:
        import torch

        new_tokens = setting["max_new_tokens"]
        keep = self.max_length - new_tokens
        if keep < 1:
            raise HarnessArgError(
                f"max_gen_toks {new_tokens} leaves no room for a prompt in max_length {self.max_length}"
            )
        prompts = [torch.tensor(self.tok_encode(c)[-keep:] or [self.prefix_token_id]) for c in contexts]
        sampling = {k: v for k, v in setting.items() if k not in ("until", "max_new_tokens")}
        result = self.runner.generate(
            prompts, max_new_tokens=new_tokens, end_id=self.eot_token_id, return_dict=True, **sampling
        )
        texts = []
        for row, prompt in enumerate(prompts):
            end = int(result["sequence_lengths"][row, 0])
            text = self.tokenizer.decode(result["output_ids"][row, 0, prompt.numel() : end].tolist())
            for stop in setting["until"]:
                text = text.split(stop)[0] if stop else text
            texts.append(text)
        return texts


def generation_settings(gen_kwargs: dict, eos: str) -> dict:
    """The runner's ``generate`` settings for one request's generation kwargs (unknown ones refused)."""
    kwargs = normalize_gen_kwargs(dict(gen_kwargs), 256)
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
    settings = {"until": until, "max_new_tokens": int(kwargs.pop("max_gen_toks"))}
    sample = bool(kwargs.pop("do_sample", False)) and float(kwargs.get("temperature", 0.0)) > 0
    settings.update({"temperature": 1.0, "top_k": 1} if not sample else {"top_k": 0})
    for name in SAMPLING_KWARGS:
        value = kwargs.pop(name, None)
        if sample and value is not None:
            settings[name] = value
    if kwargs:
        raise HarnessArgError(f"generation kwargs: {', '.join(sorted(kwargs))} not supported by --model ckpt")
    return settings


def _positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise HarnessArgError(f"--model_args: {name}={value!r} is not a whole number (auto is not supported)") from None
    if number < 1:
        raise HarnessArgError(f"--model_args: {name} must be >= 1 (got {number})")
    return number


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def tasks_dir() -> Path:
    """The lm-eval task definitions shipped with ckpt_eval (over its own data, no hub)."""
    with resources.as_file(resources.files("ckpt_eval") / "data" / TASKS_DIR) as path:
        return Path(path)


def main(argv: list[str] | None = None) -> int:
    """``ckpt-lm-eval``: the ``lm_eval`` command line with ``--model ckpt`` registered."""
    from lm_eval.__main__ import HarnessCLI

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv) and "--model" in argv:
        argv += ["--include_path", str(tasks_dir())]
    saved, sys.argv = sys.argv, ["ckpt-lm-eval", *argv]
    try:
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    except (RunnerError, CheckpointError) as err:  # HarnessArgError, the runner's and the format's one-line errors
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
