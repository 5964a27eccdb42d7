"""Start-up of ``ckpt-convert hf``: what a fresh interpreter imports, checked in ``sys.modules`` (not timed).

Parsing an hf command line loads none of numpy, ml_dtypes, torch or transformers; a whole fp16
safetensors -> safetensors conversion loads numpy (the transforms need it) but never ml_dtypes
(~0.6 s to import), torch or transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ckptfmt import RankFileWriter, validate_checkpoint

HEAVY = ("numpy", "ml_dtypes", "torch", "transformers")

# runs ckpt-convert's main() in this interpreter, then prints which HEAVY modules it loaded (atexit: main may exit)
PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules))))
argv = sys.argv[1:]
{body}
"""
PARSE_ONLY = "import ckpt_convert.cli as cli\ncli.build_parser(argv).parse_args(argv)"
CONVERT = "from ckpt_convert.cli import main\nsys.exit(main(argv))"


def loaded(body: str, argv: list[str]) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running ``body`` with ``argv``."""
    code = PROBE.format(heavy=HEAVY, body=body)
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def write_fp16_llama(model_dir: Path) -> None:
    """A tiny LLaMA (2 layers, GQA) as HF writes it: config.json + model.safetensors of random fp16."""
    hidden, ffn, heads, kv, vocab = 64, 128, 4, 2, 250
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)}
        shapes |= {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden)}
        shapes |= {p + "self_attn.k_proj.weight": (kv * 16, hidden), p + "self_attn.v_proj.weight": (kv * 16, hidden)}
        shapes |= {p + f"mlp.{n}_proj.weight": (ffn, hidden) for n in ("gate", "up")}
        shapes |= {p + "mlp.down_proj.weight": (hidden, ffn)}
    model_dir.mkdir()
    rng = np.random.default_rng(0)
    with RankFileWriter(model_dir / "model.safetensors", {n: (np.float16, s) for n, s in shapes.items()}) as w:
        for name, shape in shapes.items():
            w.write(name, rng.standard_normal(shape).astype(np.float16))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": 2,
        "vocab_size": vocab,
        "max_position_embeddings": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "torch_dtype": "float16",
        "tie_word_embeddings": False,
    }
    (model_dir / "config.json").write_text(json.dumps(config))


def test_parsing_an_hf_command_line_loads_nothing_heavy():
    argv = ["hf", "--model_dir", "m", "--output_dir", "out", "--dtype", "float16", "--tp_size", "2"]
    assert loaded(PARSE_ONLY, argv) == []


def test_fp16_safetensors_conversion_loads_numpy_only(tmp_path):
    write_fp16_llama(tmp_path / "m")
    argv = ["hf", "--model_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "out"), "--tp_size", "2"]
    assert loaded(CONVERT, [*argv, "--quiet"]) == ["numpy"]
    assert validate_checkpoint(tmp_path / "out", require_manifest=True)[0] == []
