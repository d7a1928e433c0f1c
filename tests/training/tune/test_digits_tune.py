"""The must-show: a tune of at least 20 trials on digits finds a configuration at least as good
as the training defaults (same data split, same epochs). Slow: about a minute on 2 cores.
The README's numbers are this tune's (40 trials, 2 rounds, the default space)."""

from __future__ import annotations

import pytest

from bnserve.training.config import TrainConfig
from bnserve.training.train import train
from bnserve.training.tune.runner import run_tune
from bnserve.training.tune.settings import TuneSettings
from bnserve.training.tune.space import DEFAULT_SPACE


@pytest.mark.slow
def test_forty_trials_on_digits_match_or_beat_the_defaults(tmp_path):
    defaults = train(TrainConfig(), tmp_path / "defaults", progress=False, plot=False)
    settings = TuneSettings(
        out=tmp_path / "tune", space=DEFAULT_SPACE, trials=40, rounds=2, progress=False
    )
    result = run_tune(settings)
    assert result.best is not None
    assert result.best.dev_error <= defaults.dev_error
