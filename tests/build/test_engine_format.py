"""ckptfmt.engine: the engine directory's config round-trips and its inconsistencies fail in one line."""

from __future__ import annotations

import json

import pytest
from checkpoints import layout_config

from ckpt_build.contract import io_contract
from ckpt_build.limits import Limits, resolve_limits
from ckptfmt.engine import BoundTo, EngineConfig, check_engine_dir, load_engine_config
from ckptfmt.errors import CheckpointError


def engine_config(tp=1, pp=2) -> EngineConfig:
    config = layout_config("llama-gqa", tp=tp, pp=pp)
    build = resolve_limits(config, Limits(max_batch_size=4, max_input_len=32, max_output_len=16))
    return EngineConfig(
        pretrained_config=config.to_dict(),
        build_config=build,
        io=io_contract(config, build),
        bound_to=BoundTo("tensorrt_rtx", "1.7.1.116", ["sm89"], "ckpt-build", "0.1.0"),
    )


def write_engine_dir(path, engine: EngineConfig):
    path.mkdir()
    engine.save(path)
    for rank in range(engine.world_size):
        (path / f"rank{rank}.engine").write_bytes(b"plan")
    return path


def test_round_trip_and_contract(tmp_path):
    engine = engine_config(tp=2, pp=2)
    loaded = check_engine_dir(write_engine_dir(tmp_path / "e", engine))
    assert loaded.to_dict() == engine.to_dict()
    last = loaded.stage_of_rank(3)
    assert last.pp_rank == 1 and last.layers == [1]
    assert [t.name for t in last.inputs] == [
        "hidden_states_input",
        "position_ids",
        "last_token_index",
        "past_key_1",
        "past_value_1",
    ]
    assert last.aliases() == {"present_key_1": "past_key_1", "present_value_1": "past_value_1"}
    cache = last.tensor("past_key_1")
    assert cache.concrete_shape({"batch": 3}) == (3, 1, 48, 16)
    assert loaded.io.dims == {"batch": [1, 4], "seq": [1, 32]}
    assert loaded.io.kv_cache.max_seq_len == 48


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda d: d.pop("io"), "io: missing"),
        (lambda d: d.update(version="trtllm-0.9"), "version: unsupported"),
        (lambda d: d["io"]["stages"][0]["inputs"][0].update(shape=["batch", "tokens"]), "unknown dim 'tokens'"),
        (lambda d: d["io"]["stages"][0]["outputs"][1].update(alias_of="nope"), "aliases unknown input"),
        (lambda d: d["build_config"].update(max_seq_len=8), "max_seq_len"),
        (lambda d: d["pretrained_config"].update(dtype="int3"), "dtype"),
        (lambda d: d["io"]["stages"].pop(), "stages"),
    ],
)
def test_inconsistent_config_is_one_line(tmp_path, edit, fragment):
    path = write_engine_dir(tmp_path / "e", engine_config())
    data = json.loads((path / "config.json").read_text())
    edit(data)
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as err:
        load_engine_config(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_engine_file(tmp_path):
    path = write_engine_dir(tmp_path / "e", engine_config())
    (path / "rank1.engine").unlink()
    with pytest.raises(CheckpointError, match="rank1.engine: missing"):
        check_engine_dir(path)


def test_not_an_engine_dir(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_engine_config(tmp_path)
