"""Source directories in formats this converter does not read (DeepSpeed, orbax / flax, ...), named with what to do.

The formats and their marker files are ``ckptfmt.kinds.KINDS`` (one table for every tool); this module adds the
converter's own tips and is asked only once reading the directory as the expected source has failed.
"""

from __future__ import annotations

from pathlib import Path

from ckptfmt.kinds import directory_kind

# kind name -> what a converter user can do about it
TIPS: dict[str, str] = {
    "a DeepSpeed checkpoint": (
        "its zero_to_fp32.py writes consolidated weights, which ckpt-convert hf reads beside the model's config.json"
    ),
    "a JAX (orbax / flax) checkpoint": (
        "HF_CONFIG is the model's HuggingFace config.json (docs/convert-jax.md); a transformers flax_model.msgpack "
        "beside its config.json converts with --checkpoint_dir DIR --model_config DIR"
    ),
}


def foreign_format(directory: Path, wanted: str) -> str | None:
    """``"a DeepSpeed checkpoint (DeepSpeed sources are not supported yet; ...)"`` for a directory recognisably in
    another format than ``wanted``, or None."""
    kind = directory_kind(directory, read_config=False)
    if kind is None or kind.name == wanted:
        return None
    hints = "; ".join(h for h in (kind.hint, TIPS.get(kind.name)) if h)
    return f"{kind.name} ({hints})" if hints else kind.name
