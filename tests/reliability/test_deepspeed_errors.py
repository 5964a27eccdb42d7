"""``ckpt-convert deepspeed`` on broken or hostile DeepSpeed checkpoints: one ``error:`` line naming the file, field
or tensor, exit 1, nothing written, no traceback (copies of tests/fixtures/deepspeed, broken per test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .helpers import convert, convert_here

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "deepspeed"
STEP = "global_step2"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def run(fixture: Path, tmp_path: Path, *flags: str, capsys, config: Path | None = None) -> str:
    """Convert; assert the failure contract; return the error line."""
    out = tmp_path / "out"
    argv = ["deepspeed", "--checkpoint_dir", fixture / "ckpt", "--model_config", config or fixture / "hf"]
    rc, stdout, err = convert_here(*argv, "--output_dir", out, "--quiet", *flags, capsys=capsys)
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not stdout
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return lines[0]


@pytest.mark.parametrize(
    ("name", "victim", "flags"),
    [
        ("zero2_fp32_dp2", "zero_pp_rank_1_mp_rank_00_optim_states.pt", ["--from_fp32_master"]),
        ("zero3_fp32_dp2", "zero_pp_rank_1_mp_rank_00_optim_states.pt", []),
        ("zero3_bf16_dp3", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", []),
        ("zero3_fp32_dp2", "zero_pp_rank_0_mp_rank_00_model_states.pt", []),
    ],
)
def test_missing_partition_file(tmp_path, capsys, name, victim, flags):
    fixture = copy_fixture(name, tmp_path)
    (fixture / "ckpt" / STEP / victim).unlink()
    line = run(fixture, tmp_path, *flags, capsys=capsys)
    assert f"{victim}: missing" in line


@pytest.mark.parametrize(
    ("name", "pattern", "flags"),
    [
        ("zero2_fp32_dp2", "zero_pp_rank_{}_mp_rank_00_optim_states.pt", ["--from_fp32_master"]),
        ("zero3_fp32_dp2", "zero_pp_rank_{}_mp_rank_00_{}_states.pt", []),
    ],
)
def test_world_size_not_matching_the_files(tmp_path, capsys, name, pattern, flags):
    """A third rank's files beside a checkpoint written by two ranks."""
    step = copy_fixture(name, tmp_path) / "ckpt" / STEP
    for kind in ("optim", "model"):
        src = step / pattern.format(1, kind)
        if src.exists():
            shutil.copy(src, step / pattern.format(2, kind))
    line = run(step.parents[1], tmp_path, *flags, capsys=capsys)
    assert "world size mismatch" in line and "partition_count says 2" in line and "3 optimizer partition" in line


def test_missing_pipeline_layer_file(tmp_path, capsys):
    fixture = copy_fixture("pipeline_pp2", tmp_path)
    (fixture / "ckpt" / STEP / "layer_02-model_states.pt").unlink()
    assert "layer_02-model_states.pt: missing (pipeline layer)" in run(fixture, tmp_path, capsys=capsys)


def test_missing_tensor_parallel_rank(tmp_path, capsys):
    fixture = copy_fixture("megatron_tp2", tmp_path)
    (fixture / "ckpt" / STEP / "mp_rank_01_model_states.pt").unlink()
    config = fixture / "megatron.yaml"
    line = run(fixture, tmp_path, capsys=capsys, config=config)
    assert "mp_rank_01_model_states.pt: missing (model-parallel rank 1 of 2)" in line


def test_megatron_hyper_parameters_not_matching(tmp_path, capsys):
    config = tmp_path / "megatron.yaml"
    config.write_text(
        (FIXTURES / "megatron_tp2" / "megatron.yaml").read_text().replace("ffn_hidden_size: 48", "ffn_hidden_size: 64")
    )
    line = run(FIXTURES / "megatron_tp2", tmp_path, capsys=capsys, config=config)
    assert "linear_fc1.weight" in line


def test_unknown_tag(tmp_path, capsys):
    line = run(FIXTURES / "zero3_fp32_dp2", tmp_path, "--tag", "global_step9", capsys=capsys)
    assert "--tag global_step9: no such tag folder" in line and "global_step2" in line


def test_latest_naming_a_missing_tag(tmp_path, capsys):
    fixture = copy_fixture("zero1_fp32_dp2", tmp_path)
    (fixture / "ckpt" / "latest").write_text("global_step7")
    assert "latest: names tag 'global_step7': no such tag folder" in run(fixture, tmp_path, capsys=capsys)


class Payload:
    """A class DeepSpeed never pickles: must be refused by name, never imported or called."""

    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-ckpt-test",))


def test_unknown_class_in_a_pickle_is_refused_by_name(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    fixture = copy_fixture("zero3_fp32_dp2", tmp_path)
    victim = fixture / "ckpt" / STEP / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"fp32_flat_groups": [torch.zeros(4)], "x": Payload()}}, victim)
    line = run(fixture, tmp_path, capsys=capsys)
    assert victim.name in line and "refused" in line and "shutil.rmtree" in line


def test_model_config_with_other_shapes(tmp_path, capsys):
    hf = shutil.copytree(FIXTURES / "zero3_fp32_dp2" / "hf", tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    line = run(FIXTURES / "zero3_fp32_dp2", tmp_path, capsys=capsys, config=hf)
    assert "model.layers.0.mlp.gate_proj.weight [48, 32] does not match config.json" in line


def test_model_config_with_fewer_layers(tmp_path, capsys):
    hf = shutil.copytree(FIXTURES / "zero2_fp32_dp2" / "hf", tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    line = run(FIXTURES / "zero2_fp32_dp2", tmp_path, capsys=capsys, config=hf)
    assert "tensor model.layers.1." in line and "not used" in line


def test_partitions_of_another_checkpoint(tmp_path, capsys):
    """The tied model's optimizer files (no lm_head) beside the untied model's param_shapes."""
    fixture = copy_fixture("zero3_fp32_dp2", tmp_path)
    for rank in (0, 1):
        name = f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        shutil.copy(FIXTURES / "zero3_fp32_dp2_tied" / "ckpt" / STEP / name, fixture / "ckpt" / STEP / name)
    line = run(fixture, tmp_path, capsys=capsys)
    assert "param_shapes need" in line and "files from different checkpoints?" in line


def test_partition_file_linked_out_of_the_checkpoint(tmp_path, capsys):
    fixture = copy_fixture("zero3_fp32_dp2", tmp_path / "in")
    outside = tmp_path / "elsewhere.pt"
    victim = fixture / "ckpt" / STEP / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    victim.rename(outside)
    victim.symlink_to(outside)
    line = run(fixture, tmp_path, capsys=capsys)
    assert victim.name in line and "outside the source directory" in line


def test_truncated_partition_file(tmp_path, capsys):
    fixture = copy_fixture("zero3_fp32_dp2", tmp_path)
    victim = fixture / "ckpt" / STEP / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    victim.write_bytes(victim.read_bytes()[:5000])
    assert victim.name in run(fixture, tmp_path, capsys=capsys)


def test_not_a_deepspeed_folder(tmp_path, capsys):
    (tmp_path / "empty" / "ckpt").mkdir(parents=True)
    shutil.copytree(FIXTURES / "zero0_fp32" / "hf", tmp_path / "empty" / "hf")
    assert "no 'latest' file" in run(tmp_path / "empty", tmp_path, capsys=capsys)


def test_console_script_reports_one_line(tmp_path):
    """The installed entry point, in a subprocess: the same single line (no traceback from imports)."""
    fixture = FIXTURES / "zero3_fp32_dp2"
    out = tmp_path / "out"
    proc = convert(
        "deepspeed", "--checkpoint_dir", fixture / "ckpt", "--tag", "nope", "--model_config", fixture / "hf",
        "--output_dir", out,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert not out.exists()
