"""`bnserve tune --cv K`: folds of train + dev only, identical whatever the worker count, the
best retrained on every training row, ties to the lower loss, bad values refused up front."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from bnserve.training.data.loading import load_dataset, split_rows
from bnserve.training.rundir import load_run
from bnserve.training.tune import cv
from bnserve.training.tune.cli import main
from bnserve.training.tune.report import link_best
from bnserve.training.tune.runner import rank_trials, run_tune
from bnserve.training.tune.settings import TuneSettings
from bnserve.training.tune.store import TrialRecord


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """150 rows, 3 classes (the smallest has 23 rows)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=x, y=y)
    return path


def _space(data, **fixed):
    return {
        "fixed": {"data": str(data), "epochs": 6, "hidden": [16], **fixed},
        "search": {"lr": {"scale": "log", "low": 1e-3, "high": 1e-1}},
    }


def _settings(out, data, **overrides):
    space = _space(data, early_stopping=2)
    return TuneSettings(out=out, space=space, progress=False, plots=False, **overrides)


def _facts(result):
    return [(r.trial, r.params, r.state, r.dev_error, r.history, r.scores) for r in result.ranked]


def test_cv_with_one_and_two_workers_gives_identical_results(tmp_path, small_npz):
    one = run_tune(_settings(tmp_path / "one", small_npz, trials=3, cv=3, workers=1))
    two = run_tune(_settings(tmp_path / "two", small_npz, trials=3, cv=3, workers=2))
    assert [r.state for r in one.ranked] == ["finished"] * 3
    assert _facts(one) == _facts(two)
    final_one, final_two = load_run(one.final_run), load_run(two.final_run)
    assert final_one.meta["params_sha256"] == final_two.meta["params_sha256"]


def test_a_trial_is_the_mean_over_folds_that_never_touch_the_test_rows(tmp_path, small_npz):
    result = run_tune(_settings(tmp_path / "tune", small_npz, trials=2, cv=3, workers=1))
    dataset = load_dataset(str(small_npz))
    split = split_rows(150, dev_fraction=0.15, test_fraction=0.15, seed=0)
    for record in result.ranked:
        runs = [load_run(tmp_path / "tune" / record.run_dir / f"fold-{i}") for i in range(3)]
        dev_rows = sum(run.meta["split"]["dev_rows"] for run in runs)
        assert dev_rows == len(split.train) + len(split.dev)  # every training row is dev once
        for run in runs:
            assert run.meta["split"]["test_rows"] == len(split.test)
            assert run.meta["split"]["train_rows"] + run.meta["split"]["dev_rows"] == 128
            np.testing.assert_array_equal(run.heldout_x, dataset.x[split.test])  # test = test
        errors = [run.meta["dev_error"] for run in runs]
        assert record.dev_error == pytest.approx(statistics.fmean(errors))
        assert record.scores["dev_std"] == pytest.approx(statistics.stdev(errors))
        assert record.scores["fold_kept_epochs"] == [run.meta["kept_epoch"] for run in runs]
        assert record.scores["epochs"] == round(
            statistics.median(record.scores["fold_kept_epochs"])
        )
    best = result.best
    final = load_run(result.final_run)
    assert result.final_run == tmp_path / "tune" / "final"
    assert final.meta["split"]["train_rows"] == 128 and final.meta["split"]["dev_rows"] == 0
    assert final.meta["epochs_trained"] == best.scores["epochs"]
    assert final.config.lr == best.params["lr"] and final.config.seed == best.seed
    assert final.meta["stats"] == "population"  # no dev rows to vouch for lagging EMA statistics


def test_final_members_retrain_the_best_trials_on_every_training_row(tmp_path, small_npz):
    one = run_tune(_settings(tmp_path / "one", small_npz, trials=4, cv=3, workers=1))
    out = tmp_path / "three"
    three = run_tune(_settings(out, small_npz, trials=4, cv=3, workers=1, final_members=3))
    assert _facts(three) == _facts(one)  # the same trials: only what follows them differs
    assert three.final_runs == (out / "final", out / "final-1", out / "final-2")
    assert three.final_run == out / "final"
    # the best trial's retrain is the one-member tune's, to the bit
    first = load_run(one.final_run).meta["params_sha256"]
    assert load_run(three.final_run).meta["params_sha256"] == first
    runs = [load_run(run) for run in three.final_runs]
    for record, run in zip(three.ranked[:3], runs, strict=True):  # best first, each its own
        assert run.config.lr == record.params["lr"] and run.config.seed == record.seed
        assert run.meta["epochs_trained"] == record.scores["epochs"]
        assert run.meta["split"]["train_rows"] == 128 and run.meta["split"]["dev_rows"] == 0
        np.testing.assert_array_equal(run.heldout_x, runs[0].heldout_x)  # the same test rows
    link_best(out, three.best, three.final_runs)
    summary = json.loads((out / "best.json").read_text())
    assert summary["final_members"] == ["final", "final-1", "final-2"]
    assert summary["run_dir"] == "final" and (out / "best").resolve() == (out / "final").resolve()
    # more members than finished trials: every finished trial
    five = run_tune(_settings(tmp_path / "five", small_npz, trials=2, cv=3, workers=1,
                              final_members=5))  # fmt: skip
    assert [run.name for run in five.final_runs] == ["final", "final-1"]


@pytest.fixture(scope="module")
def small_regression(tmp_path_factory):
    """150 rows of a noisy linear target (one column)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.5, size=150)
    path = tmp_path_factory.mktemp("data") / "regression.npz"
    np.savez(path, x=x, y=y[:, None])
    return path


def test_final_members_auto_takes_several_for_small_regression(
    small_npz, small_regression, monkeypatch
):
    from bnserve.training.config import TrainConfig

    base = TrainConfig(data=str(small_regression), task="regression")
    assert cv.resolve_final_members(None, base, 5) == (
        5,
        "the model: the mean of the best 5 trials retrained "
        "(auto: regression, 128 training rows < 500)",
    )
    two = (2, "the model: the best 2 trial(s) retrained")
    assert cv.resolve_final_members("2", base, 5) == two
    assert cv.resolve_final_members("auto", base, None) == (1, "")  # the dev split: no retrain
    # classification: the best trial alone (accuracy has no bound for the mean; cv.py)
    assert cv.resolve_final_members(None, TrainConfig(data=str(small_npz)), 5) == (1, "")
    assert cv.resolve_final_members("2", TrainConfig(data=str(small_npz)), 5) == two
    monkeypatch.setattr(cv, "REPEAT_MAX_ROWS", 100)
    assert cv.resolve_final_members("auto", base, 5) == (1, "")


def test_a_flagless_tune_of_small_regression_says_and_makes_its_members(
    tmp_path, small_regression, capsys, monkeypatch
):
    monkeypatch.setattr(cv, "AUTO_FOLDS", 2)  # seconds, not minutes
    monkeypatch.setattr(cv, "AUTO_REPEATS", 1)
    monkeypatch.setattr(cv, "AUTO_FINAL_MEMBERS", 2)
    out = tmp_path / "tune"
    args = ["--out", str(out), "--data", str(small_regression), "--task", "regression",
            "--trials", "3", "--epochs", "2", "--set", "hidden=4",
            "--param", "lr=log:1e-3:1e-1", "--workers", "1", "--no-progress",
            "--no-plots"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == (
        "cross-validation: 2 folds (auto: 128 training rows < 3000); "
        "folds drawn 1 times (auto: 128 training rows < 500); "
        "the model: the mean of the best 2 trials retrained "
        "(auto: regression, 128 training rows < 500)"
    )
    assert (
        "the tune's model: the mean of the best 2 trials retrained (final, final-1): "
        f"bnserve export {out} --out model.onnx"
    ) in printed
    assert json.loads((out / "best.json").read_text())["final_members"] == ["final", "final-1"]


def test_the_retrain_keeps_the_mean_weights_of_its_last_epochs(tmp_path, small_npz):
    result = run_tune(_settings(tmp_path / "half", small_npz, trials=2, cv=3, workers=1))
    epochs = result.best.scores["epochs"]
    averaged = math.ceil(0.5 * epochs)  # the default final_average
    final = load_run(result.final_run)
    assert final.config.average_epochs == averaged
    assert final.meta["weight_averaging"] == {
        "epochs": averaged,
        "first_epoch": epochs - averaged + 1,
        "last_epoch": epochs,
        "averaged": averaged,
    }
    settings = _settings(tmp_path / "off", small_npz, trials=2, cv=3, workers=1, final_average=0)
    off = run_tune(settings)
    assert _facts(off) == _facts(result)  # the trials are the same: only the retrain differs
    assert load_run(off.final_run).meta["weight_averaging"] is None
    assert load_run(off.final_run).config.average_epochs is None


def test_repeated_cv_scores_every_drawing_of_the_folds_the_same_with_1_and_2_workers(
    tmp_path, small_npz
):
    one = run_tune(_settings(tmp_path / "one", small_npz, trials=2, cv=3, cv_repeats=2, workers=1))
    two = run_tune(_settings(tmp_path / "two", small_npz, trials=2, cv=3, cv_repeats=2, workers=2))
    assert _facts(one) == _facts(two)
    once = run_tune(_settings(tmp_path / "once", small_npz, trials=2, cv=3, workers=1))
    for record in one.ranked:
        trial_dir = tmp_path / "one" / record.run_dir
        dirs = [trial_dir / f"fold-{i}" for i in range(3)]
        dirs += [trial_dir / "repeat-1" / f"fold-{i}" for i in range(3)]
        runs = [load_run(path) for path in dirs]
        assert [run.meta["split"]["fold_repeat"] for run in runs] == [0] * 3 + [1] * 3
        for repeat in (runs[:3], runs[3:]):  # each drawing: every training row is dev once
            assert sum(run.meta["split"]["dev_rows"] for run in repeat) == 128
        np.testing.assert_array_equal(runs[0].heldout_x, runs[3].heldout_x)  # the test rows
        dev_sets = [run.meta["dev_metrics"] for run in runs]
        assert dev_sets[:3] != dev_sets[3:]  # the second drawing put other rows in each fold
        errors = [run.meta["dev_error"] for run in runs]
        assert record.dev_error == pytest.approx(statistics.fmean(errors))
        assert record.scores["fold_dev_errors"] == errors and record.scores["repeats"] == 2
        assert record.scores["epochs"] == round(
            statistics.median(record.scores["fold_kept_epochs"])
        )
    # the first drawing is the folds of a tune without repeats
    for a, b in zip(
        sorted(one.ranked, key=lambda r: r.trial),
        sorted(once.ranked, key=lambda r: r.trial),
        strict=True,
    ):
        assert a.scores["fold_dev_errors"][:3] == b.scores["fold_dev_errors"]


def test_cv_repeats_auto_repeats_for_small_data(small_npz, monkeypatch):
    from bnserve.training.config import TrainConfig

    base = TrainConfig(data=str(small_npz))
    assert cv.resolve_repeats(None, base, 5) == (
        3,
        "folds drawn 3 times (auto: 128 training rows < 500)",
    )
    assert cv.resolve_repeats("2", base, 5) == (2, "folds drawn 2 time(s)")
    assert cv.resolve_repeats("auto", base, None) == (1, "")  # no cross-validation
    monkeypatch.setattr(cv, "REPEAT_MAX_ROWS", 100)
    assert cv.resolve_repeats("auto", base, 5) == (
        1,
        "folds drawn once (auto: 128 training rows ≥ 100)",
    )


def test_equal_dev_errors_go_to_the_lower_mean_loss():
    def record(trial, dev_error, loss):
        return TrialRecord(
            trial=trial, round=0, point=trial, state="finished", params={}, seed=0,
            run_dir="", dev_error=dev_error, history=[], error=None, attempts=1,
            started_at=0.0, finished_at=1.0, seconds=1.0, scores={"loss": loss},
        )  # fmt: skip

    ranked = rank_trials([record(0, 0.1, 0.5), record(1, 0.1, 0.3), record(2, 0.05, 0.9)])
    assert [r.trial for r in ranked] == [2, 1, 0]


def test_the_table_shows_mean_and_std_over_folds(tmp_path, small_npz, capsys):
    out = tmp_path / "tune"
    args = ["--out", str(out), "--data", str(small_npz), "--trials", "2", "--cv", "3",
            "--epochs", "3", "--param", "lr=log:1e-3:1e-1", "--workers", "1",
            "--no-progress", "--no-plots"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == (
        "cross-validation: 3 folds of the train + dev rows; "
        "folds drawn 3 times (auto: 128 training rows < 500)"
    )
    assert "dev_error ± std" in printed and " ± " in printed.splitlines()[2]
    assert "over 3 folds; retrained on all train + dev rows" in printed
    assert "the tune's model" not in printed and not (out / "final-1").exists()  # classification
    assert (out / "best").resolve() == (out / "final").resolve()  # what export should take
    assert load_run(out / "best").meta["split"]["dev_rows"] == 0


def test_cv_auto_is_on_for_small_data_and_says_so(small_npz, monkeypatch):
    from bnserve.training.config import TrainConfig

    base = TrainConfig(data=str(small_npz))
    assert cv.resolve_cv("auto", base) == (
        5,
        "cross-validation: 5 folds (auto: 128 training rows < 3000)",
    )
    monkeypatch.setattr(cv, "SMALL_MAX_ROWS", 100)  # as if the table were mid-size
    assert cv.resolve_cv("auto", base) == (
        3,
        "cross-validation: 3 folds (auto: 100 ≤ 128 training rows < 10000)",
    )
    monkeypatch.setattr(cv, "AUTO_MAX_ROWS", 100)
    assert cv.resolve_cv("auto", base) == (
        None,
        "cross-validation: off (auto: 128 training rows ≥ 100)",
    )


def test_without_flags_the_row_count_picks_the_validation_in_the_first_line(
    tmp_path, small_npz, capsys, monkeypatch
):
    args = ["--data", str(small_npz), "--trials", "1", "--epochs", "2", "--set", "hidden=4",
            "--param", "lr=log:1e-3:1e-1", "--workers", "1", "--no-progress",
            "--no-plots"]  # fmt: skip
    monkeypatch.setattr(cv, "AUTO_FOLDS", 2)  # seconds, not minutes
    monkeypatch.setattr(cv, "AUTO_REPEATS", 2)
    assert main(["--out", str(tmp_path / "small"), *args]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "cross-validation: 2 folds (auto: 128 training rows < 3000); "
        "folds drawn 2 times (auto: 128 training rows < 500)"
    )
    best = json.loads((tmp_path / "small" / "best.json").read_text())
    assert best["run_dir"] == "final" and best["cv"]["repeats"] == 2
    assert best["final_members"] == ["final"]  # classification: the best trial alone
    assert best["members"] == ["trials/trial-0000/fold-0", "trials/trial-0000/fold-1"]
    assert all((tmp_path / "small" / member / "params.npz").is_file() for member in best["members"])
    monkeypatch.setattr(cv, "AUTO_MAX_ROWS", 100)  # as if the table were large
    assert main(["--out", str(tmp_path / "large"), *args]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "cross-validation: off (auto: 128 training rows ≥ 100): "
        "trials are compared on the dev split (15% of the rows)"
    )
    assert not (tmp_path / "large" / "final").exists()
    assert main(["--out", str(tmp_path / "off"), "--cv", "off", *args]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "cross-validation: off: trials are compared on the dev split (15% of the rows)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cv", "1"], "--cv 1: cross-validation needs at least 2 folds"),
        (["--cv", "three"], "--cv 'three': expected a number of folds (≥ 2), auto or off"),
        (["--cv", "30"], "30 folds need at least 30 training rows of every class"),
        (["--cv", "3", "--set", "early_stopping=0"], "'early_stopping' = 0 is invalid"),
        (["--cv", "3", "--objective", "synthetic"], "not with --objective synthetic"),
        (["--set", "dev_fraction=0"], "early stopping watches the dev error"),
        (["--metric", "r2"], "--metric: metric 'r2' does not apply to classification"),
        (["--set", "patience=3"], "unknown config field(s): patience"),
        (["--set", "target_transform=log"], "transforms a regression target"),
        (["--cv", "3", "--cv-repeats", "0"], "--cv-repeats 0: must be ≥ 1"),
        (["--cv", "3", "--cv-repeats", "two"], "--cv-repeats 'two': expected a count"),
        (["--cv", "off", "--cv-repeats", "2"], "--cv-repeats 2 repeats cross-validation"),
        (["--cv", "3", "--final-average", "1.5"], "--final-average 1.5: a share of the epochs"),
        (["--cv", "3", "--final-average", "-0.1"], "--final-average -0.1: a share of the epochs"),
        (["--cv", "3", "--final-members", "0"], "--final-members 0: must be ≥ 1"),
        (["--cv", "3", "--final-members", "two"], "--final-members 'two': expected a count"),
        (["--cv", "off", "--final-members", "2"], "--final-members 2 retrains after cross-valid"),
    ],
)
def test_bad_cv_values_are_named_before_any_trial(tmp_path, small_npz, capsys, args, message):
    out = tmp_path / "tune"
    code = main(["--out", str(out), "--data", str(small_npz), "--no-progress", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_class_weight_and_metric_reach_every_trial(tmp_path, small_npz, capsys):
    out = tmp_path / "tune"
    args = ["--out", str(out), "--data", str(small_npz), "--trials", "1", "--epochs", "2",
            "--cv", "off", "--class-weight", "balanced", "--metric", "balanced_accuracy", "--param",
            "lr=log:1e-3:1e-1", "--workers", "1", "--no-progress", "--no-plots"]  # fmt: skip
    assert main(args) == 0
    run = load_run(out / "best")
    assert (run.config.class_weight, run.config.metric) == ("balanced", "balanced_accuracy")
    assert run.meta["dev_error"] == pytest.approx(1 - run.meta["dev_metrics"]["balanced_accuracy"])
    capsys.readouterr()
