"""--average-epochs: the kept weights are the mean of the window's checkpoints, with the exact
population statistics of those averaged weights; resume, bad values and export keep working."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.export.exporter import ExportSettings, export_run
from bnserve.training import model
from bnserve.training.averaging import WeightAverage
from bnserve.training.cli import main
from bnserve.training.config import TrainConfig
from bnserve.training.rundir import load_run
from bnserve.training.state import load_state
from bnserve.training.train import net_spec, prepare, train

STATISTICS = ("running_mean", "running_var")


def _is_statistic(name: str) -> bool:
    return name.endswith(STATISTICS)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Three noisy classes of 240 rows, 5 features: a few epochs move the weights visibly."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(240, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=240) > 0).astype(np.int64)
    y += (x[:, 2] > 1).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "three.npz"
    np.savez(path, x=x, y=y)
    return path


def _config(data, **changes) -> TrainConfig:
    values = {"data": str(data), "hidden": (16, 8), "lr": 1e-2, "batch_size": 32, "epochs": 6}
    return TrainConfig.from_dict({**values, "stats": "population", "average_epochs": 3, **changes})


def test_the_average_is_the_mean_of_the_window_s_parameters():
    average = WeightAverage.for_run(average_epochs=2, total_epochs=4)
    for epoch, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        average.add(epoch, {"w": np.full(3, value, dtype=np.float32)})
    np.testing.assert_array_equal(average.mean(np.float32)["w"], np.full(3, 6.0))
    assert average.describe() == {"epochs": 2, "first_epoch": 3, "last_epoch": 4, "averaged": 2}
    assert WeightAverage.for_run(10, 4).first_epoch == 1  # a window longer than the run: all
    assert WeightAverage.for_run(2, 4).mean(np.float32) == {}


def test_kept_weights_are_the_mean_of_the_last_checkpoints_with_their_population_stats(
    table, tmp_path
):
    config = _config(table)
    result = train(config, tmp_path / "run", progress=False, plot=False)
    run = load_run(tmp_path / "run")
    checkpoints = [load_state(run.path, epoch)[0].params for epoch in (4, 5, 6)]
    for name, array in run.params.items():
        if name.startswith(("hidden", "output")) and not _is_statistic(name):
            mean = np.mean([checkpoint[name].astype(np.float64) for checkpoint in checkpoints], 0)
            np.testing.assert_allclose(array, mean, rtol=1e-6, atol=1e-7)
            assert not np.allclose(array, checkpoints[-1][name])  # not the last epoch's
    # the statistics are the exact ones of the averaged network over the training rows
    prepared = prepare(config)
    averaged = {name: array.astype(np.float32) for name, array in run.params.items()}
    expected = model.population_statistics(
        averaged, prepared.x_train.take(slice(None)), net_spec(config)
    )
    assert set(expected) == {name for name in run.params if _is_statistic(name)}
    for name, array in expected.items():
        np.testing.assert_allclose(run.params[name], array, rtol=1e-5, atol=1e-6)
    assert run.meta["weight_averaging"] == {
        "epochs": 3,
        "first_epoch": 4,
        "last_epoch": 6,
        "averaged": 3,
    }
    assert result.kept_epoch == run.meta["kept_epoch"] == 6


def test_a_resumed_run_averages_what_an_uninterrupted_one_does(table, tmp_path):
    whole = _config(table)
    train(whole, tmp_path / "whole", progress=False, plot=False)
    train(whole.replace(epochs=4), tmp_path / "part", progress=False, plot=False)  # epochs 2–4
    train(whole, tmp_path / "part", resume=True, progress=False, plot=False)  # 4 from disk
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "part")
    assert a.meta["weight_averaging"] == b.meta["weight_averaging"]
    assert set(a.params) == set(b.params)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_an_averaged_run_exports_and_passes_the_parity_check(table, tmp_path):
    train(_config(table), tmp_path / "run", progress=False, plot=False)
    report = export_run(ExportSettings(run_dir=tmp_path / "run", out=tmp_path / "model.onnx"))
    assert report.folded and report.verification.passed and report.layers.passed


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"average_epochs": 0}, "'average_epochs' = 0 is invalid: must be None or in [1, epochs"),
        ({"average_epochs": 7}, "'average_epochs' = 7 is invalid: must be None or in [1, epochs"),
        ({"early_stopping": 3}, "None with early_stopping"),
        ({"stats": "ema"}, "None with stats 'ema'"),
    ],
)
def test_bad_averaging_settings_are_refused(table, changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        _config(table, **changes)
    assert _config(table, stats="ema", batchnorm=False).average_epochs == 3  # no BN: no stats


def test_a_bad_average_epochs_flag_is_one_line(table, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--data", str(table), "--epochs", "2", "--average-epochs", "3"]
    code = main([*args, "--stats", "population", "--no-progress"])
    error = capsys.readouterr().err
    assert code != 0 and error.startswith("bnserve train: error: ") and error.count("\n") == 1
    assert "'average_epochs' = 3 is invalid" in error and not out.exists()
