"""Learning-rate schedules: the rate at chosen epochs, and a run's history records them."""

from __future__ import annotations

import math

import pytest

from bnserve.training.schedule import learning_rate


def test_constant_is_lr_decay_from_the_settings_epoch():
    assert learning_rate("constant", 0.1, 1, 10) == 0.1
    assert learning_rate("constant", 0.1, 4, 10, lr_decay=0.5) == pytest.approx(0.0125)
    assert learning_rate("constant", 0.1, 4, 10, lr_decay=0.5, since_epoch=3) == 0.05


def test_cosine_starts_at_lr_halves_midway_and_ends_near_zero():
    rates = [learning_rate("cosine", 0.1, epoch, 10) for epoch in range(1, 11)]
    assert rates[0] == 0.1
    assert rates[5] == pytest.approx(0.05)  # epoch 6 of 10: half way down the cosine
    assert rates[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 9 / 10)))
    assert 0 < rates[-1] < 0.003 and rates == sorted(rates, reverse=True)


def test_cosine_with_warm_up():
    rates = [learning_rate("cosine", 0.1, epoch, 12, warmup=2) for epoch in range(1, 13)]
    assert rates[:3] == pytest.approx([0.05, 0.1, 0.1])  # linear to lr, then the cosine's top
    assert rates[7] == pytest.approx(0.05)  # epoch 8: 5 of the 10 cosine epochs done


def test_onecycle_warms_up_from_a_25th_over_30_percent_then_anneals():
    rates = [learning_rate("onecycle", 0.1, epoch, 10) for epoch in range(1, 11)]
    assert rates[:3] == pytest.approx([0.004, 0.052, 0.1])  # 3 warm-up epochs: 0.1/25 → 0.1
    assert rates[3] == pytest.approx(0.1)  # the cosine tail starts at lr
    assert rates[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 6 / 7)))
    assert learning_rate("onecycle", 0.1, 5, 10, warmup=5) == pytest.approx(0.1)
    assert learning_rate("onecycle", 0.1, 1, 10, warmup=5) == pytest.approx(0.004)


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        learning_rate("step", 0.1, 1, 10)
