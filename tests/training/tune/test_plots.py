"""Plots show each hyperparameter on its own scale: log axes for α, and 1 − β for log1m."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training.tune.plots import dev_error_figure, write_plots
from bnserve.training.tune.sampler import full_box
from bnserve.training.tune.space import build_space
from bnserve.training.tune.store import TrialRecord

SPACE = build_space(
    {
        "fixed": {},
        "search": {
            "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
            "beta1": {"scale": "log1m", "low": 0.9, "high": 0.999},
            "dropout": {"scale": "linear", "low": 0.0, "high": 0.5},
            "optimizer": {"choice": ["adam", "sgd"]},
        },
    }
)


def _record(trial, state, lr, beta1, dev_error):
    params = {"lr": lr, "beta1": beta1, "dropout": 0.1, "optimizer": "adam", "batchnorm": True}
    return TrialRecord(
        trial=trial, round=0, point=trial, state=state, params=params, seed=0,
        run_dir=f"trials/trial-{trial:04d}", dev_error=dev_error, history=[0.5, dev_error],
        error=None, attempts=1, started_at=0.0, finished_at=1.0, seconds=1.0,
    )  # fmt: skip


RECORDS = [
    _record(0, "finished", 1e-3, 0.99, 0.05),
    _record(1, "finished", 1e-1, 0.9, 0.2),
    _record(2, "pruned", 1e-4, 0.999, 0.6),
    _record(3, "failed", 1e-2, 0.95, None),
]


def test_each_panel_uses_its_dimensions_scale():
    figure = dev_error_figure(SPACE, RECORDS)
    panels = {axis.get_xlabel(): axis for axis in figure.axes if axis.get_visible()}
    assert set(panels) == {"lr", "1 − beta1", "dropout", "optimizer"}
    assert panels["lr"].get_xscale() == "log"
    assert panels["1 − beta1"].get_xscale() == "log"
    assert panels["dropout"].get_xscale() == "linear"
    plotted = np.concatenate([c.get_offsets()[:, 0] for c in panels["1 − beta1"].collections])
    np.testing.assert_allclose(sorted(plotted), [0.001, 0.01, 0.1])  # 1 − β, failed left out
    labels = [tick.get_text() for tick in panels["optimizer"].get_xticklabels()]
    assert labels == ["adam", "sgd"]


def test_write_plots_writes_every_png(tmp_path):
    paths = write_plots(tmp_path, SPACE, [(0, full_box(SPACE))], RECORDS, compare_batchnorm=True)
    assert {path.name for path in paths} == {
        "dev_error_vs_params.png",
        "learning_curves.png",
        "boxes.png",
        "batchnorm_compare.png",
    }
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
