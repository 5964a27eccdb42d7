"""Hypothesis fuzzing of the three readers a hostile checkpoint reaches first: config.json, manifest.json and
rank-file headers. Each input ends in a valid result or one CheckpointError line, never another exception.

CI (``CI`` set) runs 10,000 examples per reader, a developer's run 1,000; ``CKPTFMT_FUZZ_EXAMPLES`` overrides
both. On a loaded 2-core machine 10,000 examples took 3.7-5.1 min per reader; CI runs them alone.
"""

import json
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptfmt import CheckpointConfig, CheckpointError, RankFileReader, expected_tensors, model_spec
from ckptfmt.io import read_manifest

from .conftest import llama_dict

EXAMPLES = int(os.environ.get("CKPTFMT_FUZZ_EXAMPLES", "10000" if os.environ.get("CI") else "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**66), 2**66)
    | st.sampled_from([0, 1, 2, 3, 4, 7, 64, 4096, 10**9, 10**400 // 10**399])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
BASE = llama_dict(tp=2)
FIELDS = sorted({*BASE, "rotary_scaling", "rotary_pct", "head_size", "sliding_window", "quantization", "rotary_dim"})


@st.composite
def configs(draw) -> dict:
    d = json.loads(json.dumps(BASE))
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if draw(st.booleans()):
            d[key] = draw(json_values)
        else:
            d.pop(key, None)
    if draw(st.booleans()):
        d["mapping"] = {k: draw(st.integers(-1, 9) | json_values) for k in ("tp_size", "pp_size", "world_size")}
    return d


@FUZZ
@given(src=configs())
def test_config_reader(src):
    try:
        cfg = CheckpointConfig.from_dict(src).check()
    except CheckpointError as err:
        assert "\n" not in str(err)
        return
    model_spec(cfg)
    for rank in range(cfg.mapping.world_size):
        expected_tensors(cfg, rank)


@FUZZ
@given(data=json_values | st.fixed_dictionaries({"files": st.dictionaries(st.text(max_size=6), json_values)}))
def test_manifest_reader(tmp_path_factory, data):
    d = tmp_path_factory.getbasetemp() / "manifest-fuzz"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(json.dumps(data))
    try:
        files = read_manifest(d)
    except CheckpointError as err:
        assert "\n" not in str(err)
        return
    assert all(not os.path.isabs(rel) and ".." not in rel.split("/") for rel in files)


entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "U8", "I64", "BF16", "F8_E4M3", "X"]) | json_values,
        "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2) | json_values,
    }
)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=4), entries | json_values, max_size=4), tail=st.integers(0, 64))
def test_rank_file_header_reader(tmp_path_factory, header, tail):
    path = tmp_path_factory.getbasetemp() / "header-fuzz.safetensors"
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(tail))
    try:
        reader = RankFileReader(path)
    except CheckpointError as err:
        assert "\n" not in str(err)
        return
    for name in reader:
        reader[name]
    reader.close()
