"""Build limits against the model's positions: derived ones stay within, asked-for ones beyond are said."""

from __future__ import annotations

import logging

import pytest
from checkpoints import layout_config

from ckpt_build.limits import Limits, resolve_limits


@pytest.mark.parametrize("positions", [128, 256, 4096])
def test_derived_limits_stay_within_the_positions(positions: int) -> None:
    build = resolve_limits(layout_config("llama-gqa", max_position_embeddings=positions), Limits())
    assert build.max_seq_len == min(positions, 2048) and build.max_input_len == min(positions // 2, 1024)


def test_rotary_limits_beyond_the_positions_are_built_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    config = layout_config("llama-gqa")  # 128 positions, rotary
    with caplog.at_level(logging.WARNING):
        build = resolve_limits(config, Limits(max_input_len=1024, max_output_len=256))
    assert build.max_seq_len == 1280
    assert "1024 + 256 = 1280 exceeds max_position_embeddings 128" in caplog.text
