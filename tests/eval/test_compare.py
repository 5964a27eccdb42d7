"""The speed ratio of two systems run batch by batch in turn (``ckpt_eval.compare``)."""

from __future__ import annotations

import pytest

from ckpt_eval.compare import SystemRun, speed_ratio


def runs(true_ratio: float, load: list[float], first_penalty: float) -> tuple[SystemRun, SystemRun]:
    """Batches of 100 tokens; ours ``true_ratio`` x faster; each batch slowed by its ``load`` factor, and the
    system that runs first in a batch (ours in even batches, the reference in odd ones) by ``first_penalty``."""
    ours, ref = SystemRun("ours"), SystemRun("ref")
    for index, factor in enumerate(load):
        ours_first = index % 2 == 0
        ours.seconds.append(factor / true_ratio * (first_penalty if ours_first else 1.0))
        ref.seconds.append(factor * (1.0 if ours_first else first_penalty))
        ours.batch_tokens.append(100)
        ref.batch_tokens.append(100)
    return ours, ref


def test_the_ratio_ignores_load_changes_and_the_order():
    ours, ref = runs(1.5, load=[1.0, 1.0, 3.0, 3.0, 0.5, 0.5], first_penalty=1.4)
    ratio = speed_ratio(ours, ref)
    assert ratio["median"] == pytest.approx(1.5)
    assert ratio["batches"] == 6 and ratio["per_batch"][0] == pytest.approx(1.5 / 1.4)


def test_the_totals_move_with_load_when_one_system_is_hit():
    ours, ref = runs(1.0, load=[1.0] * 6, first_penalty=1.0)
    ref.seconds[1] *= 10  # a load spike during one reference batch: its pair is outvoted by the other two
    ratio = speed_ratio(ours, ref)
    assert ratio["median"] == pytest.approx(1.0) and ratio["overall"] == pytest.approx(15 / 6)


def test_an_odd_last_batch_counts_alone():
    ours, ref = runs(2.0, load=[1.0], first_penalty=1.0)
    assert speed_ratio(ours, ref)["median"] == pytest.approx(2.0)
