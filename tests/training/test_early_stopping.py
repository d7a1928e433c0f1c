"""Early stopping: the tracker's rule, and train() keeping the best epoch (with resume too)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnserve.training import rundir
from bnserve.training.config import TrainConfig
from bnserve.training.early_stopping import BestEpoch
from bnserve.training.rundir import load_run
from bnserve.training.state import load_state
from bnserve.training.train import train


def test_the_best_epoch_needs_more_than_min_delta_and_patience_counts_from_it():
    best = BestEpoch(patience=2, min_delta=0.01)
    assert best.update(1, 0.50)
    assert best.update(2, 0.40)
    assert not best.update(3, 0.395)  # better, but not by more than min_delta
    assert not best.should_stop
    assert not best.update(4, 0.41)
    assert best.should_stop and (best.epoch, best.value) == (2, 0.40)
    assert not BestEpoch(patience=None).should_stop


def test_an_equal_objective_with_a_lower_dev_loss_is_a_new_best():
    best = BestEpoch(patience=2)
    assert best.update(1, 0.25, loss=0.9)
    assert best.update(2, 0.25, loss=0.7)  # the same error rate, more sure of it
    assert not best.update(3, 0.25, loss=0.8)
    assert not best.update(4, 0.25)  # no loss: a tie cannot win
    assert best.should_stop and best.epoch == 2
    assert not BestEpoch(patience=1).update(1, None)  # no dev rows: never a best


def test_replay_rebuilds_the_tracker_from_history():
    history = [{"epoch": e, "dev_error": v} for e, v in enumerate([0.5, 0.3, 0.31, 0.35], 1)]
    best = BestEpoch.replay(history, patience=2, min_delta=0.0)
    assert (best.epoch, best.last_epoch, best.should_stop) == (2, 4, True)
    assert not BestEpoch.replay(history, patience=3, min_delta=0.0).should_stop


@pytest.fixture(scope="module")
def noisy_csv(tmp_path_factory):
    """A small regression table with noise: the dev RMSE falls, wobbles, then stops improving."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 6))
    y = x[:, 0] + 0.5 * np.sin(x[:, 1]) + rng.normal(scale=0.5, size=200)
    path = tmp_path_factory.mktemp("data") / "noisy.csv"
    lines = [",".join([*(f"f{i}" for i in range(6)), "target"])]
    lines += [
        ",".join([*(f"{v:.6f}" for v in row), f"{t:.6f}"]) for row, t in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(data, **changes):
    values = {"data": str(data), "hidden": (64, 64), "lr": 1e-3, "batch_size": 16, "epochs": 60}
    return TrainConfig.from_dict({**values, "early_stopping": 4, **changes})


def test_early_stopping_keeps_the_best_epoch_exactly_as_its_checkpoint(noisy_csv, tmp_path):
    result = train(_config(noisy_csv), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    errors = [record["dev_error"] for record in result.history]
    best_epoch = int(np.argmin(errors)) + 1  # the first of equal minima: later ties are no better
    assert run.meta["kept_epoch"] == result.kept_epoch == best_epoch
    # it stopped after 4 epochs without a better dev error, well before 60
    assert run.meta["epochs_trained"] == best_epoch + 4 < 60
    assert run.meta["early_stopping"] == {
        "patience": 4,
        "min_delta": 0.0,
        "best_epoch": best_epoch,
        "stopped": True,
    }
    history = json.loads((run.path / "history.json").read_text())
    assert [record["epoch"] for record in history if record["kept"]] == [best_epoch]
    checkpoint, _ = load_state(run.path, best_epoch)
    last, _ = load_state(run.path, run.meta["epochs_trained"])
    for name, array in checkpoint.params.items():  # weights and running statistics alike
        np.testing.assert_array_equal(run.params[name], array.astype(np.float64))
    assert not np.array_equal(run.params["hidden1.W"], last.params["hidden1.W"])
    assert run.meta["dev_error"] == pytest.approx(
        errors[best_epoch - 1], rel=1e-5
    )  # float64 vs float32


def test_a_resumed_run_stops_and_keeps_what_an_uninterrupted_one_does(noisy_csv, tmp_path):
    whole = train(_config(noisy_csv), tmp_path / "whole", progress=False, plot=False)
    assert whole.kept_epoch > 2
    part = _config(noisy_csv, epochs=whole.kept_epoch + 1)
    train(part, tmp_path / "part", progress=False, plot=False)
    resumed = train(part.replace(epochs=60), tmp_path / "part", resume=True, progress=False)
    assert resumed.kept_epoch == whole.kept_epoch

    def curve(history):  # the settings differ (epochs), the training must not
        return [(r["epoch"], r["cost"], r["dev_error"], r["kept"]) for r in history]

    assert curve(resumed.history) == curve(whole.history)
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "part")
    assert set(a.params) == set(b.params)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    # resuming a stopped run with the same patience trains no further epoch
    again = train(part.replace(epochs=60), tmp_path / "part", resume=True, progress=False)
    assert len(again.history) == len(whole.history)
    assert rundir.checkpoint_epochs(tmp_path / "part")[-1] == len(whole.history)


def test_without_early_stopping_the_last_epoch_is_kept(noisy_csv, tmp_path):
    result = train(
        _config(noisy_csv, early_stopping=None, epochs=5), tmp_path / "run", progress=False
    )
    run = load_run(tmp_path / "run")
    assert result.kept_epoch == run.meta["kept_epoch"] == 5 and run.meta["early_stopping"] is None
    last, _ = load_state(run.path, 5)
    np.testing.assert_array_equal(run.params["output.W"], last.params["output.W"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"early_stopping": 0}, "'early_stopping' = 0 is invalid"),
        ({"min_delta": -0.1}, "'min_delta' = -0.1 is invalid"),
    ],
)
def test_bad_early_stopping_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(changes)
