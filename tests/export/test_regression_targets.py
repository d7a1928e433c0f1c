"""Regression targets are standardized for training and de-standardized in the exported graph:
the ONNX model answers in the target's own units (a check that this stays so)."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from bnserve.export.cli import main as export_main
from bnserve.training.config import TrainConfig
from bnserve.training.data.loading import load_dataset, split_rows
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from bnserve.training.train import train


def test_a_large_valued_target_trains_standardized_and_exports_in_its_units(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3))
    y = 5000.0 + 1000.0 * x[:, 0] - 300.0 * x[:, 1] + rng.normal(scale=50.0, size=300)
    path = tmp_path / "price.csv"
    rows = [f"{a:.6f},{b:.6f},{c:.6f},{t:.4f}" for (a, b, c), t in zip(x, y, strict=True)]
    path.write_text("a,b,c,price\n" + "\n".join(rows) + "\n")
    config = TrainConfig(data=str(path), hidden=(16,), epochs=40, lr=1e-2, metric="r2")
    train(config, tmp_path / "run", progress=False, plot=False)
    run = load_run(tmp_path / "run")
    dataset = load_dataset(str(path))
    split = split_rows(300, dev_fraction=0.15, test_fraction=0.15, seed=0)
    # the net learned standardized targets: the training split's mean and std are in params
    np.testing.assert_allclose(run.params["target.mean"], dataset.y[split.train].mean(axis=0))
    np.testing.assert_allclose(run.params["target.std"], dataset.y[split.train].std(axis=0))
    assert run.meta["metric"] == "r2" and run.meta["test_metrics"]["r2"] > 0.8
    assert export_main([str(run.path), "--out", str(tmp_path / "m.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    outputs = session.run(["y"], {"x": run.heldout_x.astype(np.float32)})[0]
    expected = predict(run.params, run.meta, run.heldout_x)
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=0.05)  # in price units
    rmse = float(np.sqrt(np.mean((outputs - run.heldout_y) ** 2)))
    assert rmse == pytest.approx(run.meta["test_metrics"]["rmse"], rel=1e-4)
    assert rmse < 0.5 * float(run.heldout_y.std())
