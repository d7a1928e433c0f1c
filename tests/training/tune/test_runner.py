"""The coordinator: identical trials whatever the worker count, rounds, early stopping, resume
rules, and the batch-norm comparison — with real (tiny) training where it matters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnserve.training.rundir import load_run
from bnserve.training.tune.errors import TuneError, TuneSettingsError
from bnserve.training.tune.runner import run_tune
from bnserve.training.tune.settings import TuneSettings
from bnserve.training.tune.store import FILENAME, TrialStore

# Real training, small enough for ~0.2 s a trial on digits.
TINY_TRAINING = {
    "fixed": {"epochs": 2, "hidden": [16]},
    "search": {
        "lr": {"scale": "log", "low": 1e-3, "high": 1e-1},
        "beta1": {"scale": "log1m", "low": 0.8, "high": 0.99},
        "batch_size": {"choice": [32, 64]},
    },
}
SYNTHETIC = {
    "fixed": {"epochs": 12},
    "search": {
        "lr": {"scale": "log", "low": 1e-5, "high": 1.0},
        "beta1": {"scale": "log1m", "low": 0.5, "high": 0.999},
        "batch_size": {"choice": [16, 32, 64, 128, 256]},
        "layers": {"scale": "int", "low": 1, "high": 4},
    },
}


def _settings(out, space, **overrides):
    return TuneSettings(out=out, space=space, progress=False, plots=False, **overrides)


def _trial_facts(result):
    return [(r.trial, r.params, r.state, r.dev_error, r.history) for r in result.ranked]


def test_one_and_two_workers_give_identical_trials(tmp_path):
    one = run_tune(_settings(tmp_path / "one", TINY_TRAINING, trials=4, workers=1))
    two = run_tune(_settings(tmp_path / "two", TINY_TRAINING, trials=4, workers=2))
    assert [r.state for r in one.ranked] == ["finished"] * 4
    assert _trial_facts(one) == _trial_facts(two)
    for record in one.ranked:  # the very same parameters, not just the same error
        run_one = load_run(tmp_path / "one" / record.run_dir)
        run_two = load_run(tmp_path / "two" / record.run_dir)
        assert run_one.meta["params_sha256"] == run_two.meta["params_sha256"]
        assert run_one.meta["dev_error"] == record.dev_error
    assert len({r.dev_error for r in one.ranked}) > 1  # the points really differ


def test_each_point_trains_from_its_own_seed_on_one_shared_split(tmp_path):
    result = run_tune(_settings(tmp_path / "tune", TINY_TRAINING, trials=4, workers=1))
    seeds = {record.seed for record in result.ranked}
    assert len(seeds) == 4  # from (tune seed, point index): not one seed for every trial
    runs = [load_run(tmp_path / "tune" / record.run_dir) for record in result.ranked]
    for run, record in zip(runs, result.ranked, strict=True):
        assert run.config.seed == record.seed
        assert run.config.data_split_seed == 0  # the fixed settings' split, shared by all
        np.testing.assert_array_equal(run.heldout_x, runs[0].heldout_x)


def test_rounds_shrink_the_box_and_sample_inside_it(tmp_path):
    settings = _settings(
        tmp_path / "tune",
        SYNTHETIC,
        trials=30,
        rounds=3,
        shrink=0.5,
        workers=2,
        objective="synthetic",
    )
    result = run_tune(settings)
    space = settings.search_space()
    assert [index for index, _ in result.rounds] == [0, 1, 2]
    widths = [box.ranges["lr"][1] - box.ranges["lr"][0] for _, box in result.rounds]
    assert widths == pytest.approx([5, 2.5, 1.25])
    for index, box in result.rounds:
        members = [r for r in result.ranked if r.round == index]
        assert len(members) == 10
        for record in members:
            for name, (lo, hi) in box.ranges.items():
                assert (
                    lo - 1e-9
                    <= space.dimension(name).to_coordinate(record.params[name])
                    <= hi + 1e-9
                )
            assert record.params["batch_size"] in box.choices["batch_size"]
    best_by_round = [min(r.dev_error for r in result.ranked if r.round == i) for i in range(3)]
    assert best_by_round[2] <= best_by_round[0]
    assert result.best.params["lr"] == pytest.approx(10**-2.5, rel=1.0)  # the synthetic optimum


def test_median_rule_prunes_hopeless_trials(tmp_path):
    result = run_tune(
        _settings(
            tmp_path / "tune",
            SYNTHETIC,
            trials=16,
            workers=1,
            objective="synthetic",
            early_stop="median",
            grace_epochs=2,
        )
    )
    pruned = [r for r in result.ranked if r.state == "pruned"]
    finished = [r for r in result.ranked if r.state == "finished"]
    assert pruned and finished
    assert all(2 <= len(r.history) < 12 for r in pruned)
    assert all(len(r.history) == 12 for r in finished)
    assert result.best.state == "finished"
    # every pruned trial was worse, when stopped, than the median of what earlier trials had reached
    assert min(r.dev_error for r in pruned) > result.best.dev_error


def test_successive_halving_decides_only_at_rungs_and_keeps_the_best(tmp_path):
    result = run_tune(
        _settings(
            tmp_path / "tune",
            SYNTHETIC,
            trials=24,
            workers=1,
            objective="synthetic",
            early_stop="halving",
            grace_epochs=2,
            reduction=2,
        )
    )
    pruned = [r for r in result.ranked if r.state == "pruned"]
    finished = [r for r in result.ranked if r.state == "finished"]
    assert pruned and finished
    assert {len(r.history) for r in pruned} <= {2, 4, 8}  # the rungs 2·2^k below 12 epochs
    assert all(len(r.history) == 12 for r in finished)
    assert result.best.state == "finished"
    assert min(r.dev_error for r in pruned) > result.best.dev_error


def test_compare_batchnorm_trains_each_point_with_and_without(tmp_path):
    result = run_tune(
        _settings(tmp_path / "tune", TINY_TRAINING, trials=4, workers=2, compare_batchnorm=True)
    )
    by_trial = sorted(result.ranked, key=lambda r: r.trial)
    for with_bn, without_bn in (by_trial[0:2], by_trial[2:4]):
        assert with_bn.point == without_bn.point
        assert with_bn.params == {**without_bn.params, "batchnorm": True}
        assert without_bn.params["batchnorm"] is False
        assert load_run(tmp_path / "tune" / without_bn.run_dir).meta["batchnorm"] is False
        assert "hidden1.running_mean" in load_run(tmp_path / "tune" / with_bn.run_dir).params


def test_a_tune_directory_is_never_mixed_up(tmp_path):
    settings = _settings(tmp_path / "tune", SYNTHETIC, trials=3, objective="synthetic", workers=1)
    run_tune(settings)
    with pytest.raises(TuneError, match="already exists and is not empty"):
        run_tune(settings)
    changed = _settings(tmp_path / "tune", SYNTHETIC, trials=5, objective="synthetic", workers=1)
    with pytest.raises(TuneError, match="cannot resume with different trials"):
        run_tune(changed, resume=True)
    with pytest.raises(TuneError, match=r"no tune\.sqlite to resume"):
        run_tune(_settings(tmp_path / "other", SYNTHETIC, trials=3), resume=True)
    with TrialStore(tmp_path / "tune" / FILENAME, readonly=True) as store:
        assert len(store.trials()) == 3


def test_resume_of_a_finished_tune_reruns_nothing(tmp_path):
    settings = _settings(tmp_path / "tune", SYNTHETIC, trials=5, objective="synthetic", workers=1)
    first = run_tune(settings)
    again = run_tune(settings, resume=True)
    assert _trial_facts(first) == _trial_facts(again)
    assert all(r.attempts == 1 for r in again.ranked)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": 0}, "--workers 0: need at least 1 worker"),
        ({"trials": 0}, "--trials 0"),
        ({"rounds": 4, "trials": 3}, "--rounds 4 is more than --trials 3"),
        ({"shrink": 1.0}, "--shrink 1.0"),
        ({"compare_batchnorm": True, "trials": 3}, "--trials 3 is odd"),
        ({"compare_batchnorm": True, "rounds": 2}, "--compare-batchnorm runs one round"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, overrides, message):
    with pytest.raises(TuneSettingsError) as raised:
        _settings(tmp_path / "tune", SYNTHETIC, **{"trials": 4, **overrides})
    assert message in str(raised.value)
    assert not (tmp_path / "tune").exists()


def test_a_missing_data_file_is_named_before_any_trial(tmp_path):
    space = {**TINY_TRAINING, "fixed": {"epochs": 2, "data": str(tmp_path / "missing.csv")}}
    with pytest.raises(Exception, match=r"missing\.csv: no such data file"):
        run_tune(_settings(tmp_path / "tune", space, trials=2, workers=1))
    assert not (tmp_path / "tune").exists()


def test_a_tune_resumes_through_another_path_to_its_directory(tmp_path, monkeypatch):
    settings = _settings(tmp_path / "tune", SYNTHETIC, trials=3, objective="synthetic", workers=1)
    run_tune(settings)
    monkeypatch.chdir(tmp_path)
    relative = _settings(Path("tune"), SYNTHETIC, trials=3, objective="synthetic", workers=1)
    assert [r.attempts for r in run_tune(relative, resume=True).ranked] == [1, 1, 1]
