"""``ckpt-convert jax`` on trees orbax and flax wrote (tests/convert/jax, make_fixtures.py): every layout converts to
exactly the bytes ``ckpt-convert hf`` writes from the same model, at tp/pp (1,1), (2,1), (1,2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from ckpt_convert.hf.architectures import ARCHITECTURES
from tests.convert.conftest import run_cli

FIXTURES = Path(__file__).resolve().parent / "jax"
LAYOUTS = {
    "llama": ("ocdbt", "zarr3", "per_array", "manager", "flax.msgpack", "chunked.msgpack", "train_state.msgpack"),
    "gemma1": ("per_array", "ocdbt", "flax.msgpack"),
    "gemma2": ("ocdbt", "manager"),
    "gemma3": ("ocdbt", "manager", "flax.msgpack"),
}
MODEL_TYPES = {"llama": "llama", "gemma1": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}
PARALLEL = [(1, 1), (2, 1), (1, 2)]
CASES = [(m, layout) for m, layouts in LAYOUTS.items() for layout in layouts]


def convert(source: str, out: Path, capsys, *flags: object) -> tuple[int, str]:
    rc, _, err = run_cli(source, *flags, "--output_dir", out, "--quiet", capsys=capsys)
    return rc, err


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory):
    """``ckpt-convert hf`` of each fixture model at each layout, made once."""
    made: dict[tuple[str, int, int], Path] = {}

    def get(model: str, tp: int, pp: int, capsys) -> Path:
        key = (model, tp, pp)
        if key not in made:
            out = tmp_path_factory.mktemp("hf") / f"{model}-tp{tp}pp{pp}"
            rc, err = convert(
                "hf", out, capsys, "--model_dir", FIXTURES / model / "hf", "--tp_size", tp, "--pp_size", pp
            )
            assert rc == 0, err
            made[key] = out
        return made[key]

    return get


def assert_same_checkpoint(ours: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.iterdir() if p.is_file())
    assert sorted(p.name for p in ours.iterdir() if p.is_file()) == names
    for name in names:
        if name.endswith(".safetensors") or name == "config.json":
            assert (ours / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.parametrize("tp,pp", PARALLEL, ids=[f"tp{t}pp{p}" for t, p in PARALLEL])
@pytest.mark.parametrize("model,layout", CASES, ids=[f"{m}-{layout}" for m, layout in CASES])
def test_jax_equals_hf_conversion(model, layout, tp, pp, hf_reference, tmp_path, capsys):
    if MODEL_TYPES[model] not in ARCHITECTURES:
        pytest.skip(f"ckpt-convert hf has no {MODEL_TYPES[model]} architecture (the byte reference) yet")
    reference = hf_reference(model, tp, pp, capsys)
    out = tmp_path / "out"
    rc, err = convert(
        "jax",
        out,
        capsys,
        "--checkpoint_dir",
        FIXTURES / model / layout,
        "--model_config",
        FIXTURES / model / "hf" / "config.json",
        "--tp_size",
        tp,
        "--pp_size",
        pp,
    )
    assert rc == 0, err
    assert_same_checkpoint(out, reference)


def test_step_selection(hf_reference, tmp_path, capsys):
    """The manager fixture holds step 1 (embedding negated) and step 2; default is the highest."""
    reference = hf_reference("llama", 1, 1, capsys)
    flags = ("--model_config", FIXTURES / "llama" / "hf")
    rc, err = convert("jax", tmp_path / "s2", capsys, "--checkpoint_dir", FIXTURES / "llama" / "manager", *flags)
    assert rc == 0, err
    assert_same_checkpoint(tmp_path / "s2", reference)
    rc, err = convert(
        "jax", tmp_path / "s1", capsys, "--checkpoint_dir", FIXTURES / "llama" / "manager", "--step", 1, *flags
    )
    assert rc == 0, err
    step1, want = load_file(tmp_path / "s1" / "rank0.safetensors"), load_file(reference / "rank0.safetensors")
    for name, value in want.items():
        expected = -value if name == "transformer.vocab_embedding.weight" else value
        assert (step1[name] == expected).all(), name


def test_workers(hf_reference, tmp_path, capsys):
    """--workers: each worker process opens the tree itself (the opener pickles)."""
    reference = hf_reference("gemma2" if "gemma2" in ARCHITECTURES else "llama", 2, 1, capsys)
    model = reference.name.split("-")[0]
    out = tmp_path / "out"
    flags = ("--checkpoint_dir", FIXTURES / model / "ocdbt", "--model_config", FIXTURES / model / "hf")
    rc, err = convert("jax", out, capsys, *flags, "--tp_size", 2, "--workers", 2)
    assert rc == 0, err
    assert_same_checkpoint(out, reference)


def test_gemma_padded_embedding_rows_are_cut(hf_reference, tmp_path, capsys):
    """Gemma 1/2 releases store more embedding rows than HF's vocab_size: the padding rows are left out, said once."""
    if "gemma3_text" not in ARCHITECTURES:
        pytest.skip("ckpt-convert hf has no gemma3_text architecture (the byte reference) yet")
    reference = load_file(hf_reference("gemma3", 1, 1, capsys) / "rank0.safetensors")
    config = json.loads((FIXTURES / "gemma3" / "hf" / "config.json").read_text())
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({**config, "vocab_size": 90}))
    flags = ("--checkpoint_dir", FIXTURES / "gemma3" / "ocdbt", "--model_config", tmp_path / "cfg")
    rc, err = convert("jax", tmp_path / "out", capsys, *flags)
    assert rc == 0 and err.count("\n") == 1, err
    assert "embedder/input_embedding: [96, 16] stored, model.embed_tokens.weight [90, 16] written" in err
    ours = load_file(tmp_path / "out" / "rank0.safetensors")
    for name, value in reference.items():
        cut = name in ("transformer.vocab_embedding.weight", "lm_head.weight")
        assert (ours[name] == (value[:90] if cut else value)).all(), name
