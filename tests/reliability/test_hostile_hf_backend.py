"""The hf reference backend given a code-carrying pickle: one line, exit 1, and the payload never runs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from tests.tiny_models import make_tiny_hf


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_pickle_is_refused_in_one_line(tmp_path):
    from tests.eval.summarize_helpers import save_tiny_tokenizer

    model = make_tiny_hf("llama-gqa", tmp_path / "hf", fmt="bin")
    save_tiny_tokenizer(model)
    marker = tmp_path / "executed"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Payload(marker)}))
    ckpt_run = str(Path(sys.executable).with_name("ckpt-run"))
    cmd = [ckpt_run, "--backend", "hf", "--hf_model_dir", str(model), "--input_text", "hello"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert "pytorch_model.bin" in errors[0] or str(model) in errors[0]
    assert not marker.exists(), "the pickle's payload ran"
