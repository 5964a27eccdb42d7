"""One module per HuggingFace architecture: its mapping table and its config translation.

``ARCHITECTURES`` maps each supported ``model_type`` to its ``HFArchitecture``.
"""

from __future__ import annotations

from ckptfmt import CheckpointError

from ..hf_config import HFConfig
from . import falcon, gemma, gpt2, gptneox, llama, opt
from .base import HFArchitecture

ARCHITECTURES: dict[str, HFArchitecture] = {
    model_type: module.ARCHITECTURE
    for module in (llama, gpt2, opt, gptneox, falcon, gemma)
    for model_type in module.ARCHITECTURE.model_types
}


def architecture_of(hf: HFConfig) -> HFArchitecture:
    try:
        return ARCHITECTURES[hf.model_type]
    except KeyError:
        raise CheckpointError(
            f"{hf.path}: model_type {hf.model_type!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        ) from None


__all__ = ["ARCHITECTURES", "HFArchitecture", "architecture_of"]
