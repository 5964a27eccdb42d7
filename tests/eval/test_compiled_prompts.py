"""Prompts through compiled layers (``Transformer.compile_prompts``, what ``--compile`` adds on a GPU) for every
architecture of the support table and the quantized modes: greedy tokens and log-probs of a ragged batch equal
the eager layers', and all layers share one compiled graph."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # before anything imports triton, which reads it once: the other test modules'
    os.environ["TRITON_INTERPRET"] = "1"  # fused kernels run in its interpreter in this same process
pytest.importorskip("triton")

from ckpt_eval.fp8_quantize import quantize_fp8  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckpt_eval.wq_quantize import quantize_wq  # noqa: E402
from ckptfmt import CheckpointConfig  # noqa: E402
from tests.eval.test_fused_decode import ARCHITECTURES, BASE  # noqa: E402
from tests.random_checkpoint import random_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow
QUANTIZED = ("fp8", "int4_awq", "int8")


def checkpoint(tmp_path, name: str):
    if name not in QUANTIZED:
        config = CheckpointConfig.from_dict({**BASE, **ARCHITECTURES[name]}).check()
        return random_checkpoint(tmp_path / name, config)
    config = CheckpointConfig.from_dict({**BASE, "hidden_size": 128, "intermediate_size": 256}).check()
    src, out = random_checkpoint(tmp_path / "float", config), tmp_path / name
    if name == "fp8":
        quantize_fp8(src, out, torch.arange(3, 40).view(1, -1))
    else:
        quantize_wq(src, out, name, group=64)
    return out


@pytest.mark.parametrize("name", [*ARCHITECTURES, *QUANTIZED])
def test_compiled_prompts_give_the_eager_tokens(tmp_path, name):
    path = checkpoint(tmp_path, name)
    torch._dynamo.reset()  # a fresh cache of compiled graphs: other models' graphs would count towards its limit
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager, compiled = (ModelRunner.from_dir(path, device="cpu") for _ in range(2))
    compiled.model.model.compile_prompts()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, BASE["vocab_size"], (n,), generator=gen) for n in (9, 5, 7)]
    kwargs = dict(max_new_tokens=4, return_dict=True, output_log_probs=True)
    want, got = eager.generate(rows, **kwargs), compiled.generate(rows, **kwargs)
    assert torch.equal(got["output_ids"], want["output_ids"])
    torch.testing.assert_close(got["log_probs"], want["log_probs"], rtol=1e-4, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before + 1
