"""Make the NVIDIA ModelOpt reference exports that test_hf_modelopt.py compares our converter against.

Run from the repository root in a separate environment (ModelOpt must not enter the project's venv):

    python -m venv /tmp/movenv
    /tmp/movenv/bin/pip install -c constraints.txt -r tests/convert/modelopt/requirements.txt
    /tmp/movenv/bin/python tests/convert/modelopt/make_exports.py

For each tiny model (llama-gqa, qwen2, gpt2 from tests/tiny_models.py, saved in float16) it writes
``<name>/hf/`` (the source model) and, for (tp, pp) in (1,1), (2,1), (1,2), ``<name>/tp{tp}pp{pp}/``
with ModelOpt's ``config.json`` (one file, rewritten per rank: it holds the last rank's ``rank``) and
``tensors.json``:
per rank file, each tensor's dtype, shape and sha256 of its bytes (the rank files themselves are not
committed, to keep the repository small).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from modelopt.torch.export import export_tensorrt_llm_checkpoint
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from tests.tiny_models import make_tiny_hf  # noqa: E402

MODELS = {"llama-gqa": "llama", "qwen2": "qwen", "gpt2": "gpt"}  # name -> ModelOpt decoder_type
PARALLEL = [(1, 1), (2, 1), (1, 2)]


def tensor_summary(export_dir: Path) -> dict:
    out = {}
    for path in sorted(export_dir.glob("rank*.safetensors")):
        with safe_open(path, framework="pt") as f:
            entries = {}
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
                entries[name] = {
                    "dtype": str(t.dtype).removeprefix("torch."),
                    "shape": list(t.shape),
                    "sha256": hashlib.sha256(raw).hexdigest(),
                }
        out[path.name] = entries
    return out


def export(name: str, decoder_type: str) -> None:
    hf_dir = HERE / name / "hf"
    shutil.rmtree(HERE / name, ignore_errors=True)
    make_tiny_hf(name, hf_dir, dtype="float16")
    for extra in ("generation_config.json",):
        (hf_dir / extra).unlink(missing_ok=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float16).eval()
    model.config.architectures = [type(model).__name__]
    for tp, pp in PARALLEL:
        with tempfile.TemporaryDirectory() as tmp:
            export_tensorrt_llm_checkpoint(
                model,
                decoder_type=decoder_type,
                dtype=torch.float16,
                export_dir=tmp,
                inference_tensor_parallel=tp,
                inference_pipeline_parallel=pp,
            )
            target = HERE / name / f"tp{tp}pp{pp}"
            target.mkdir(parents=True)
            shutil.copy(Path(tmp) / "config.json", target / "config.json")
            (target / "tensors.json").write_text(json.dumps(tensor_summary(Path(tmp)), indent=1) + "\n")


def main() -> None:
    import modelopt

    for name, decoder_type in MODELS.items():
        export(name, decoder_type)
    versions = {
        "nvidia-modelopt": modelopt.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (HERE / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(versions)


if __name__ == "__main__":
    main()
