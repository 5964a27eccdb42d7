"""``ckpt-convert nemo`` on real NeMo 2 / Megatron-core fixtures and NeMo 1 archives (tests/fixtures/{nemo,megatron}).

- every fixture converts at target (tp, pp) in {(1,1), (2,1), (1,2)} and validates;
- fixtures made from the tiny HF LLaMA give exactly the tensors ``ckpt-convert hf`` gives for that model;
- the TP1, TP2 and PP2 saves of one model give identical checkpoints (source shards merged exactly);
- the torch backend's logits on the converted checkpoints match transformers (HF-made fixtures) and
  megatron's own forward (Megatron-core fixtures), fp32 within 1e-4 relative.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ckptfmt import RankFileReader, check_checkpoint, load_config
from tests.convert.conftest import run_cli

pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NEMO, MEGATRON = FIXTURES / "nemo", FIXTURES / "megatron"
HF_LLAMA = NEMO / "hf_llama"
TARGETS = [(1, 1), (2, 1), (1, 2)]
MCORE_VARIANTS = ("llama", "gpt", "rope_partial")

# name -> extra CLI arguments (the source path first)
HF_MADE = {
    "nemo1-tp1": [NEMO / "llama_tp1.nemo"],
    "nemo1-tp2": [NEMO / "llama_tp2.nemo"],
    "nemo1-pp2": [NEMO / "llama_pp2.nemo"],
    "nemo1-tp2pp2": [NEMO / "llama_tp2pp2.nemo"],
    "nemo2": [NEMO / "nemo2_llama"],
}
MCORE = {
    f"mcore-{v}-{par}": [MEGATRON / f"{v}_{par}", "--model_config", MEGATRON / f"{v}.yaml"]
    for v in MCORE_VARIANTS
    for par in ("tp1", "tp2", "pp2")
}
MCORE["nemo1-dist"] = [NEMO / "mcore_llama_dist.nemo"]  # model_weights/ torch_dist inside a .nemo
ROPE_SCALED = ("llama_scaled", "llama_interp")  # megatron rope_scaling (llama3) / seq_len_interpolation_factor
MCORE.update({f"mcore-{v}-tp1": [MEGATRON / f"{v}_tp1", "--model_config", MEGATRON / f"{v}.yaml"] for v in ROPE_SCALED})
ALL = {**HF_MADE, **MCORE}


class Converted:
    """Conversions made once per module (each takes well under a second)."""

    def __init__(self, root: Path):
        self.root = root

    def nemo(self, name: str, tp: int, pp: int, capsys, *flags: str) -> Path:
        out = self.root / f"{name}-tp{tp}pp{pp}{''.join(flags)}"
        if not (out / "config.json").exists():
            source, *rest = ALL[name]
            argv = ["nemo", "--nemo_ckpt_path", source, *rest, "--output_dir", out, "--dtype", "float32"]
            rc, _, err = run_cli(*argv, "--tp_size", str(tp), "--pp_size", str(pp), "--quiet", *flags, capsys=capsys)
            assert rc == 0, err
        return out

    def hf(self, tp: int, pp: int, capsys) -> Path:
        out = self.root / f"hf-tp{tp}pp{pp}"
        if not (out / "config.json").exists():
            argv = ["hf", "--model_dir", HF_LLAMA, "--output_dir", out, "--dtype", "float32"]
            rc, _, err = run_cli(*argv, "--tp_size", str(tp), "--pp_size", str(pp), "--quiet", capsys=capsys)
            assert rc == 0, err
        return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return Converted(tmp_path_factory.mktemp("nemo-converted"))


def rank_tensors(directory: Path) -> dict[tuple[int, str], np.ndarray]:
    config = load_config(directory)
    out = {}
    for rank in range(config.mapping.world_size):
        reader = RankFileReader(directory / f"rank{rank}.safetensors")
        out.update({(rank, name): np.array(reader[name]) for name in reader.entries})
    return out


def assert_same_checkpoint(a: Path, b: Path) -> None:
    ta, tb = rank_tensors(a), rank_tensors(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and ta[key].shape == tb[key].shape, key
        assert ta[key].tobytes() == tb[key].tobytes(), f"{key} differs between {a.name} and {b.name}"


@pytest.mark.parametrize(("tp", "pp"), TARGETS)
@pytest.mark.parametrize("name", list(ALL))
def test_every_fixture_converts_and_validates(converted, capsys, name, tp, pp):
    out = converted.nemo(name, tp, pp, capsys)
    config = check_checkpoint(out)  # config, every rank file's tensors and shapes, manifest checksums
    assert (config.mapping.tp_size, config.mapping.pp_size) == (tp, pp)
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    if name in HF_MADE:
        assert "tokenizer/tokenizer.json" in manifest
        assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (HF_LLAMA / "tokenizer.json").read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary directories left behind"


@pytest.mark.parametrize(("tp", "pp"), TARGETS)
@pytest.mark.parametrize("name", list(HF_MADE))
def test_same_tensors_as_hf_converter_on_the_source_model(converted, capsys, name, tp, pp):
    ours, theirs = converted.nemo(name, tp, pp, capsys), converted.hf(tp, pp, capsys)
    assert_same_checkpoint(ours, theirs)
    a, b = load_config(ours), load_config(theirs)
    for field in (
        "architecture",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "kv_heads",
        "hidden_act",
        "intermediate_size",
        "norm_epsilon",
        "position_embedding_type",
        "max_position_embeddings",
        "head_size",
    ):
        assert getattr(a, field) == getattr(b, field), field
    assert a.get("rotary_base") == b.get("rotary_base")


@pytest.mark.parametrize(("tp", "pp"), TARGETS)
@pytest.mark.parametrize("model", ["nemo1", *(f"mcore-{v}" for v in MCORE_VARIANTS)])
def test_source_tp1_tp2_pp2_give_identical_checkpoints(converted, capsys, model, tp, pp):
    """Source TP 2 -> target TP 1 equals source TP 1 -> TP 1; source TP 1 -> TP 2 equals source TP 2 -> TP 2."""
    tp1, tp2, pp2 = (converted.nemo(f"{model}-{par}", tp, pp, capsys) for par in ("tp1", "tp2", "pp2"))
    assert_same_checkpoint(tp1, tp2)
    assert_same_checkpoint(tp1, pp2)
    if model == "nemo1":
        assert_same_checkpoint(tp1, converted.nemo("nemo1-tp2pp2", tp, pp, capsys))
    if model == "mcore-llama":
        assert_same_checkpoint(tp1, converted.nemo("nemo1-dist", tp, pp, capsys))


def test_megatron_lm_iteration_folder(converted, capsys, tmp_path):
    """A Megatron-LM save folder: latest_checkpointed_iteration.txt names the iter_XXXXXXX folder to read."""
    root = tmp_path / "megatron-lm"
    shutil.copytree(MEGATRON / "llama_tp2", root / "iter_0000100")
    (root / "latest_checkpointed_iteration.txt").write_text("100\n")
    out = tmp_path / "out"
    argv = ["nemo", "--nemo_ckpt_path", root, "--model_config", MEGATRON / "llama.yaml", "--output_dir", out]
    rc, _, err = run_cli(*argv, "--dtype", "float32", "--quiet", capsys=capsys)
    assert rc == 0, err
    assert_same_checkpoint(out, converted.nemo("mcore-llama-tp1", 1, 1, capsys))


def test_extracted_nemo_directory_and_workers_give_the_same_checkpoint(converted, capsys, tmp_path):
    with tarfile.open(NEMO / "llama_tp2.nemo") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    out = tmp_path / "out"
    argv = ["nemo", "--nemo_ckpt_path", tmp_path / "extracted", "--output_dir", out, "--dtype", "float32"]
    rc, _, err = run_cli(*argv, "--tp_size", "2", "--pp_size", "2", "--workers", "2", "--quiet", capsys=capsys)
    assert rc == 0, err
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    argv = ["nemo", "--nemo_ckpt_path", NEMO / "llama_tp1.nemo", "--output_dir", tmp_path / "ref"]
    rc, _, err = run_cli(*argv, "--dtype", "float32", "--tp_size", "2", "--pp_size", "2", "--quiet", capsys=capsys)
    assert rc == 0, err
    assert_same_checkpoint(out, tmp_path / "ref")


def test_half_precision_is_the_cast_of_fp32(converted, capsys, tmp_path):
    fp32 = rank_tensors(converted.nemo("nemo2", 1, 1, capsys))
    out = tmp_path / "bf16"
    argv = ["nemo", "--nemo_ckpt_path", NEMO / "nemo2_llama", "--output_dir", out, "--dtype", "bfloat16", "--quiet"]
    assert run_cli(*argv, capsys=capsys)[0] == 0
    import ml_dtypes

    for key, value in rank_tensors(out).items():
        assert value.dtype == ml_dtypes.bfloat16
        assert value.tobytes() == fp32[key].astype(ml_dtypes.bfloat16).tobytes(), key


def test_megatron_gpt_variant_layout(converted, capsys):
    """Learned positions, LayerNorm with biases, gelu, tied output layer -> GPTForCausalLM."""
    out = converted.nemo("mcore-gpt-tp1", 1, 1, capsys)
    config = load_config(out)
    assert (config.architecture, config.hidden_act, config.position_embedding_type) == (
        "GPTForCausalLM",
        "gelu",
        "learned_absolute",
    )
    ref = {k: np.asarray(v) for k, v in _safetensors(MEGATRON / "gpt_reference.safetensors").items()}
    tensors = RankFileReader(out / "rank0.safetensors")
    assert np.array_equal(
        tensors["transformer.position_embedding.weight"], ref["model.embedding.position_embeddings.weight"]
    )
    assert np.array_equal(tensors["lm_head.weight"], ref["model.embedding.word_embeddings.weight"])  # tied
    assert np.array_equal(
        tensors["transformer.layers.1.mlp.proj.bias"], ref["model.decoder.layers.mlp.linear_fc2.bias"][1]
    )


def _safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


# ---- logits: the strongest proof the mapping is right ------------------------------------------------
FP32_TOL = 1e-4


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def context_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    runner_mod = pytest.importorskip("ckpt_eval.runner")
    runner = runner_mod.ModelRunner.from_dir(str(checkpoint), device="cpu")
    out = runner.generate([torch.tensor(ids)], max_new_tokens=1, return_dict=True, output_context_logits=True)
    return out["context_logits"][0, : len(ids)].float().numpy()


@pytest.mark.parametrize("name", list(HF_MADE))
def test_logits_match_transformers_on_the_source_model(converted, capsys, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ids = [1, 17, 42, 99, 3, 200, 7, 128, 64, 5, 231]
    hf = transformers.AutoModelForCausalLM.from_pretrained(HF_LLAMA, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    assert rel_err(context_logits(converted.nemo(name, 1, 1, capsys), ids), ref) <= FP32_TOL


@pytest.mark.parametrize("variant", MCORE_VARIANTS + ROPE_SCALED)
def test_logits_match_megatron_forward(converted, capsys, variant):
    """Without ``rotary_scaling`` the two rope-scaled variants miss by 1.3e-3 and 0.15: the check discriminates."""
    saved = _safetensors(MEGATRON / f"{variant}_logits.safetensors")
    ids = saved["input_ids"][0].tolist()
    source = f"mcore-{variant}-tp1" if variant in ROPE_SCALED else f"mcore-{variant}-pp2"
    ours = context_logits(converted.nemo(source, 1, 1, capsys), ids)
    assert rel_err(ours, saved["logits"][0]) <= FP32_TOL


def test_nemo2_llama31_rope_scaling_and_interleaved_rotary_spellings():
    from ckpt_convert.megatron_config import checkpoint_config, read_model

    h = yaml.safe_load((NEMO / "nemo2_llama" / "context" / "model.yaml").read_text())["config"]
    h.update(
        scale_factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, old_context_len=8192, rotary_interleaved=True
    )
    config = checkpoint_config(read_model(h, "model.yaml"), 256, "model.yaml")
    assert config.get("rotary_scaling") == {
        "type": "llama3",
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert config.position_embedding_type == "rope_gptj"


def test_embedding_sharing_follows_the_tensors(capsys, tmp_path):
    """The tied gpt save has no output_layer: --use_embedding_sharing drops lm_head; the llama one keeps it."""
    for variant, shared in (("gpt", True), ("llama", False)):
        out = tmp_path / variant
        argv = ["nemo", "--nemo_ckpt_path", MEGATRON / f"{variant}_tp1", "--model_config", MEGATRON / f"{variant}.yaml"]
        rc, _, err = run_cli(*argv, "--output_dir", out, "--use_embedding_sharing", "--quiet", capsys=capsys)
        assert rc == 0, err
        assert load_config(out).share_embedding_table is shared
        assert ("lm_head.weight" in RankFileReader(out / "rank0.safetensors")) is not shared
        assert ("--use_embedding_sharing ignored" in err) is not shared
        check_checkpoint(out)


def test_legacy_pickle_format_reads_the_same(converted, capsys, tmp_path):
    """model_weights.ckpt in torch's pre-zip format (cannot be memory-mapped) is read without mmap."""
    torch = pytest.importorskip("torch")
    root = tmp_path / "x"
    with tarfile.open(NEMO / "llama_tp1.nemo") as tar:
        tar.extractall(root, filter="data")
    state = torch.load(root / "model_weights.ckpt", weights_only=True)
    torch.save(state, root / "model_weights.ckpt", _use_new_zipfile_serialization=False)
    out = tmp_path / "out"
    argv = ["nemo", "--nemo_ckpt_path", root, "--output_dir", out, "--dtype", "float32", "--quiet"]
    rc, _, err = run_cli(*argv, capsys=capsys)
    assert rc == 0, err
    assert_same_checkpoint(out, converted.nemo("nemo1-tp1", 1, 1, capsys))
