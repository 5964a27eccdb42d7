"""The rank-file reader accepts exactly what safetensors accepts; anything else is one CheckpointError line."""

import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptfmt import CheckpointError, RankFileReader


def write(path, header, data: bytes = b"", raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def good_header():
    return {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]},
    }


def test_a_sound_file_reads(tmp_path):
    r = RankFileReader(write(tmp_path / "f", good_header(), bytes(16)))
    assert r.keys() == ["a", "b"] and r["b"].shape == (2, 2)


def _edit(key, field, value):
    h = good_header()
    h[key][field] = value
    return h


@pytest.mark.parametrize(
    ("header", "data", "fragment"),
    [
        (_edit("b", "data_offsets", [4, 12]), 16, "overlaps"),
        (_edit("b", "data_offsets", [12, 20]), 20, "hole"),
        (good_header(), 17, "bytes after the last tensor"),
        (good_header(), 15, "truncated"),
        (_edit("a", "shape", [-2]), 16, "shape"),
        (_edit("a", "shape", [2.0]), 16, "shape"),
        (_edit("a", "shape", [True, 2]), 16, "shape"),
        (_edit("a", "data_offsets", [0.0, 8.0]), 16, "data_offsets"),
        (_edit("a", "data_offsets", [0, 8, 9]), 16, "data_offsets"),
        (_edit("a", "dtype", "F128"), 16, "unknown dtype"),
        (_edit("a", "dtype", ["F32"]), 16, "unknown dtype"),
        (_edit("a", "shape", [2**40, 2**40]), 16, "do not match"),
        ({"a": [1, 2]}, 0, "corrupt header entry"),
        ({"__metadata__": {"k": 1}}, 0, "__metadata__"),
        ([1, 2], 0, "not a JSON object"),
    ],
)
def test_hostile_headers_get_one_line(tmp_path, header, data, fragment):
    path = write(tmp_path / "rank0.safetensors", header, bytes(data))
    with pytest.raises(CheckpointError, match=fragment) as err:
        RankFileReader(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_duplicate_names_are_refused(tmp_path):
    raw = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    with pytest.raises(CheckpointError, match="named twice"):
        RankFileReader(write(tmp_path / "f", None, bytes(2), raw=raw))


@pytest.mark.parametrize(
    "raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a\xff": 1}', b"\x00\x01", b'{"a": NaN}', b"{}" + b"x"]
)
def test_unparsable_headers(tmp_path, raw):
    with pytest.raises(CheckpointError, match="corrupt"):
        RankFileReader(write(tmp_path / "f", None, raw=raw))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "rank0.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        RankFileReader(fifo)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64), length=st.integers(0, 2**64 - 1))
def test_fuzzed_bytes(tmp_path, raw, length):
    path = tmp_path / "bytes.safetensors"
    path.write_bytes(struct.pack("<Q", length) + raw)
    with pytest.raises(CheckpointError):
        RankFileReader(path)
