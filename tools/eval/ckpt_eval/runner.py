"""``ModelRunner``: TensorRT-LLM's runner API (token lists in, ``[batch, beams, seq]`` out) over any backend."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .backends import RunnerError, Stepper, open_backend
from .generate import Step, check_prompts, generate_steps
from .sampling import SamplingConfig
from .scoring import TokenScores, check_scored, next_token_logprobs, score_batch

# generate() values a SamplingConfig object may carry
SAMPLING_FIELDS = (
    "max_new_tokens",
    "end_id",
    "pad_id",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "random_seed",
    "num_beams",
    "return_dict",
    "output_sequence_lengths",
    "output_log_probs",
    "output_cum_log_probs",
)
# TensorRT-LLM generate() arguments this runner has no use for: accepted at these values (or None) only
NEUTRAL_ARGS = {
    "length_penalty": 1.0,
    "early_stopping": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "min_p": 0.0,
    "num_return_sequences": 1,
    "return_all_generated_tokens": False,
    "no_repeat_ngram_size": None,
    "stop_words_list": None,
    "bad_words_list": None,
    "lora_uids": None,
    "prompt_table": None,
    "prompt_tasks": None,
    "max_attention_window_size": None,
    "sink_token_length": None,
    "encoder_input_ids": None,
}


def check_neutral(other: dict) -> None:
    for name, value in other.items():
        if name not in NEUTRAL_ARGS:
            raise RunnerError(f"generate: unknown argument {name!r}")
        if value is not None and value != NEUTRAL_ARGS[name]:
            raise RunnerError(f"generate: {name}={value!r} is not supported (leave it at {NEUTRAL_ARGS[name]!r})")


class Outputs:
    """Accumulates steps into TensorRT-LLM's output layout.

    ``output_ids[b, 0]`` holds prompt b (unpadded), then its generated tokens, the end token if one came,
    then ``pad_id``; ``sequence_lengths[b, 0]`` counts prompt + generated tokens without the end token.
    """

    def __init__(self, prompts: list[torch.Tensor], max_new_tokens: int, pad_id: int, end_id: int | None):
        self.input_lengths = torch.tensor([p.numel() for p in prompts])
        self.width, self.end_id = int(self.input_lengths.max()), end_id
        self.ids = torch.full((len(prompts), 1, self.width + max_new_tokens), pad_id, dtype=torch.long)
        for row, p in enumerate(prompts):
            self.ids[row, 0, : p.numel()] = p.cpu()
        self.lengths = self.input_lengths.clone()
        self.log_probs = torch.zeros(len(prompts), 1, max_new_tokens)
        self.generation_logits: list[torch.Tensor] = []
        self.context_logits: torch.Tensor | None = None
        self.pending: list[Step] = []

    def add(self, step: Step) -> None:
        """Keep the step (on its device: no host sync until ``result``)."""
        self.pending.append(step)

    def _apply(self, step: Step) -> None:
        tokens, active = step.tokens.cpu(), step.active.cpu()
        rows = torch.nonzero(active).flatten()
        self.ids[rows, 0, self.lengths[rows]] = tokens[rows]
        grows = active if self.end_id is None else active & (tokens != self.end_id)
        if step.log_probs is not None:
            self.log_probs[rows, 0, step.index] = step.log_probs.cpu()[rows]
        if step.logits is not None:
            self.generation_logits.append(step.logits.cpu())
        if step.context_logits is not None:  # left padded -> aligned at 0 like output_ids
            ctx = step.context_logits.cpu()
            self.context_logits = torch.zeros_like(ctx)
            for row, n in enumerate(self.input_lengths.tolist()):
                self.context_logits[row, :n] = ctx[row, self.width - n :]
        self.lengths += grows.long()

    def result(self, return_dict: bool, sequence_lengths: bool, log_probs: bool):
        for step in self.pending:
            self._apply(step)
        self.pending.clear()
        if not return_dict:
            return (self.ids.clone(), self.lengths[:, None].clone()) if sequence_lengths else self.ids.clone()
        out = {
            "output_ids": self.ids.clone(),
            "sequence_lengths": self.lengths[:, None].clone(),
            "input_lengths": self.input_lengths.clone(),
        }
        if log_probs:
            out["log_probs"] = self.log_probs.clone()
            out["cum_log_probs"] = self.log_probs.sum(-1)
        if self.generation_logits:
            out["generation_logits"] = torch.stack(self.generation_logits, 1).unsqueeze(1)  # [b, 1, steps, vocab]
        if self.context_logits is not None:
            out["context_logits"] = self.context_logits
        return out


class ModelRunner:
    """Runs a model through one backend. Build with ``ModelRunner.from_dir``."""

    def __init__(self, model: Stepper, backend: str):
        self.model, self.backend = model, backend
        self.checksums = getattr(model, "checksums", None)  # ckptfmt.BackgroundChecksums, hashing while we run

    def verify(self) -> None:
        """Wait for the background checksums of the model's files (raises ``CheckpointError`` on a mismatch).

        ``generate`` calls it before handing out its first result, so a corrupt file stops a run before any
        output while the hashing overlaps loading and the first batch."""
        if self.checksums is not None:
            self.checksums.wait()
            self.checksums = None

    @classmethod
    def from_dir(cls, model_dir: str, backend: str = "torch", device: str | None = None, **options) -> ModelRunner:
        """``model_dir``: a checkpoint directory (torch), a Hugging Face model directory (hf) or an engine
        directory (trt). Under mpirun/torchrun each process loads its own rank. Options: ``checksums`` (torch,
        trt; default True: check manifest.json's sha256 in the background, see ``verify``), ``compile`` (torch),
        ``dtype`` (hf)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(open_backend(backend, str(model_dir), device, **options), backend)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def max_seq_len(self) -> int | None:
        return self.model.max_positions

    @property
    def rank(self) -> int:
        par = getattr(self.model, "par", None)
        return par.rank if par is not None else 0

    def generate(
        self,
        batch_input_ids: Sequence[torch.Tensor],
        sampling_config=None,
        max_new_tokens: int = 1,
        end_id: int | None = None,
        pad_id: int | None = None,
        temperature: float = 1.0,
        top_k: int = 1,
        top_p: float = 0.0,
        repetition_penalty: float = 1.0,
        random_seed: int | None = None,
        num_beams: int = 1,
        streaming: bool = False,
        return_dict: bool = False,
        output_sequence_lengths: bool = False,
        output_log_probs: bool = False,
        output_cum_log_probs: bool = False,
        output_generation_logits: bool = False,
        output_context_logits: bool = False,
        **other,
    ):
        """Generate for a list of 1-D token tensors of any lengths.

        Returns ``output_ids`` [batch, 1, max_input_len + max_new_tokens]; with ``output_sequence_lengths``
        also ``sequence_lengths`` [batch, 1]; with ``return_dict`` a dict (``output_ids``, ``sequence_lengths``,
        ``input_lengths``, ``log_probs`` [batch, 1, max_new_tokens], ``cum_log_probs``, ``generation_logits``
        [batch, 1, steps, vocab], ``context_logits`` [batch, max_input_len, vocab]). With ``streaming`` an
        iterator yielding that result after every step. ``sampling_config``: an object whose attributes of the
        same names (TensorRT-LLM's ``SamplingConfig``) replace the keyword values; other TensorRT-LLM arguments
        are accepted at their neutral values (``stop_words_list=None``, ``length_penalty=1.0``, ...).
        """
        args = dict(locals())
        if sampling_config is not None:
            args.update(
                {
                    k: getattr(sampling_config, k)
                    for k in SAMPLING_FIELDS
                    if getattr(sampling_config, k, None) is not None
                }
            )
        check_neutral(other)
        if args["num_beams"] != 1:
            raise RunnerError(f"num_beams {args['num_beams']}: beam search is not supported (only num_beams 1)")
        sampling = SamplingConfig(
            *(args[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty", "random_seed"))
        )
        end_id, new_tokens = args["end_id"], args["max_new_tokens"]
        pad_id = args["pad_id"] if args["pad_id"] is not None else (end_id if end_id is not None else 0)
        log_probs = args["output_log_probs"] or args["output_cum_log_probs"]
        prompts = check_prompts(batch_input_ids, self.model.vocab_size, self.model.max_positions, new_tokens)
        steps = generate_steps(
            self.model,
            prompts,
            new_tokens,
            sampling,
            end_id,
            log_probs,
            output_generation_logits,
            output_context_logits,
        )
        outputs = Outputs(prompts, new_tokens, pad_id, end_id)
        shape = (args["return_dict"], args["output_sequence_lengths"], log_probs)
        if streaming:
            return self._stream(steps, outputs, shape)
        for step in steps:
            outputs.add(step)
        result = outputs.result(*shape)
        self.verify()
        return result

    def score(self, sequences: Sequence[torch.Tensor], starts: Sequence[int]) -> list[TokenScores]:
        """Log-probability of tokens ``seq[start:]`` of each sequence, each given all tokens before it (one
        forward pass with context logits on torch/hf; prefill + one step per scored token on trt)."""
        seqs = check_scored(sequences, starts, self.model.vocab_size, self.model.max_positions)
        result = score_batch(self.model, seqs, starts)
        self.verify()
        return result

    def next_logprobs(self, prompts: Sequence[torch.Tensor], token_ids: Sequence[int]) -> torch.Tensor:
        """[batch, len(token_ids)] log-probabilities of ``token_ids`` as the token after each prompt."""
        checked = check_prompts(prompts, self.model.vocab_size, self.model.max_positions, 1)
        result = next_token_logprobs(self.model, checked, token_ids)
        self.verify()
        return result

    def _stream(self, steps: Iterator[Step], outputs: Outputs, shape: tuple) -> Iterator:
        for step in steps:
            outputs.add(step)
            result = outputs.result(*shape)
            self.verify()
            yield result
