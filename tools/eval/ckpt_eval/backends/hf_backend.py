"""The ``hf`` backend: a Hugging Face model run by transformers, stepped like ours (reference for comparisons)."""

from __future__ import annotations

import inspect
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ckptfmt import CheckpointError
from ckptfmt.config import canonical_dtype

from ..torch_dtypes import TORCH_DTYPES
from .base import RunnerError

if TYPE_CHECKING:
    from transformers import DynamicCache

DTYPES: dict[str, torch.dtype | str] = {**TORCH_DTYPES, "auto": "auto"}


class HFStepper:
    """``AutoModelForCausalLM`` with a dynamic cache; left padding via attention mask and position ids."""

    is_sampler = True
    context_logits = True  # step(all_logits=True) returns every position's logits

    def __init__(self, model_dir: str, device: str = "cpu", dtype: str = "auto"):
        from transformers import AutoModelForCausalLM

        if not (Path(model_dir) / "config.json").is_file():
            raise RunnerError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
        try:
            dtype = canonical_dtype(dtype)  # fp16, half, bf16, fp32, float32, ... (ckptfmt's spellings)
        except CheckpointError as err:
            raise RunnerError(str(err)) from None
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RunnerError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        try:
            with warnings.catch_warnings():  # torch's note on a pickle's protocol is not the user's concern
                warnings.simplefilter("ignore", UserWarning)
                model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], local_files_only=True)
                # transformers types PreTrainedModel.to (a wrapped method) as taking the model first
                self.model = model.to(device).eval()  # type: ignore[arg-type]
        except pickle.UnpicklingError:  # torch.load(weights_only=True) met a class it does not allow
            raise RunnerError(
                f"{model_dir}: a weights file is a pickle that names code to run; refused (never executed). "
                "Convert it to safetensors with a trusted tool, or use ckpt-convert's checkpoint"
            ) from None
        except (OSError, ValueError) as err:
            raise RunnerError(f"{model_dir}: cannot load with transformers ({str(err).splitlines()[0]})") from None
        cfg = self.model.config
        self.device = torch.device(device)
        self.vocab_size = cfg.vocab_size
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.cache: DynamicCache | None = None
        self.key_mask: torch.Tensor | None = None
        params = inspect.signature(self.model.forward).parameters  # newer transformers renamed the argument
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        # last-position logits only, as transformers' own generate() asks for (a fair speed reference)
        self.last_only = "logits_to_keep" in params

    def reset(self, batch: int, max_seq: int) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.key_mask = torch.zeros(batch, max_seq, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, slots: torch.Tensor, pad: torch.Tensor, all_logits: bool = False):
        end = int(slots[-1]) + 1
        assert self.key_mask is not None, "reset allocates the attention mask"
        self.key_mask[:, slots] = (slots.unsqueeze(0) >= pad.unsqueeze(1)).long()
        positions = (slots.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
        keep = {"logits_to_keep": 1} if self.last_only and not all_logits else {}
        out = self.model(
            input_ids=tokens,
            attention_mask=self.key_mask[:, :end],
            position_ids=positions,
            use_cache=True,
            **{self.cache_arg: self.cache},  # the cache object is updated in place
            **keep,
        )
        logits = out.logits if all_logits else out.logits[:, -1:]
        return logits.float()

    def share(self, x, shape, dtype):
        return x


def open_backend(path: str, device: str = "cpu", **options) -> HFStepper:
    return HFStepper(path, device, **options)
