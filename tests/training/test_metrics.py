"""training/metrics.py against hand computations; --metric drives the dev objective;
--class-weight balanced changes the loss exactly as its formula says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnserve.training import layers, model
from bnserve.training.config import TrainConfig
from bnserve.training.metrics import evaluate, objective
from bnserve.training.rundir import load_run
from bnserve.training.train import balanced_class_weights, net_spec, train


def test_classification_metrics_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])  # predicted 0, 1, 0, 1: one mistake, in class 1
    values = evaluate(probabilities, y, "classification")
    assert values["error"] == 0.25
    assert values["balanced_accuracy"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert values["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.7)) / 4
    )
    assert objective("balanced_accuracy", values) == pytest.approx(1 - (1 + 2 / 3) / 2)


def test_regression_metrics_by_hand():
    y = np.array([[1.0], [2.0], [3.0], [4.0]])
    predicted = np.array([[1.5], [2.0], [2.5], [4.0]])
    values = evaluate(predicted, y, "regression")
    assert values["rmse"] == pytest.approx(math.sqrt(0.5 / 4))
    assert values["r2"] == pytest.approx(1 - 0.5 / 5.0)
    assert objective("r2", values) == pytest.approx(0.1)


def test_balanced_weights_are_n_over_c_times_the_class_count():
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    np.testing.assert_allclose(weights, [6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2), 0.0])


def test_the_weighted_loss_is_the_hand_computed_one_and_its_gradient_checks():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 3))
    y = np.array([0, 0, 0, 0, 1, 2])
    weights = balanced_class_weights(y, 3)  # 0.5, 2, 2
    loss, dscores = layers.softmax_cross_entropy(scores.copy(), y, weights[y])
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    by_hand = sum(weights[label] * -math.log(p[i, label]) for i, label in enumerate(y)) / 6
    assert loss == pytest.approx(by_hand, rel=1e-12)
    assert loss != pytest.approx(layers.softmax_cross_entropy(scores.copy(), y)[0])
    step = 1e-6  # centred finite differences of the weighted loss
    for i, j in [(0, 0), (4, 1), (5, 2), (3, 1)]:
        up, down = scores.copy(), scores.copy()
        up[i, j] += step
        down[i, j] -= step
        numeric = (
            layers.softmax_cross_entropy(up, y, weights[y])[0]
            - layers.softmax_cross_entropy(down, y, weights[y])[0]
        ) / (2 * step)
        assert dscores[i, j] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_training_uses_the_balanced_weights_in_its_cost(tmp_path):
    config = TrainConfig(hidden=(8,), epochs=1, class_weight="balanced", batchnorm=False)
    rng = np.random.default_rng(1)
    params = model.init_params([4, 8, 2], activation="relu", batchnorm=False, rng=rng)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    y = np.array([0] * 8 + [1] * 2)
    weights = balanced_class_weights(y, 2)  # 10/16, 10/4
    cost, _, _ = model.loss_and_grads(
        params, x, y, net_spec(config), task="classification", class_weight=weights
    )
    scores, _, _ = model.forward(params, x, net_spec(config), train=False)
    p = layers.softmax(scores.astype(np.float64))
    by_hand = float(np.mean(weights[y] * -np.log(p[np.arange(10), y])))
    assert cost == pytest.approx(by_hand, rel=1e-5)


def test_a_balanced_run_states_its_weights_and_metric(tmp_path):
    config = TrainConfig(hidden=(16,), epochs=2, class_weight="balanced", metric="log_loss")
    result = train(config, tmp_path / "run", progress=False, plot=False)
    meta = load_run(tmp_path / "run").meta
    assert meta["metric"] == "log_loss" and len(meta["class_weight"]) == 10
    assert meta["dev_error"] == meta["dev_metrics"]["log_loss"] == result.dev_error
    assert set(meta["test_metrics"]) == {"error", "balanced_accuracy", "log_loss"}
    assert meta["test_accuracy"] == pytest.approx(1 - meta["test_metrics"]["error"])
    # history's dev error is the same objective, epoch by epoch (float32 vs float64 apart)
    assert result.history[-1]["dev_error"] == pytest.approx(meta["dev_error"], rel=1e-4)


def test_balanced_accuracy_is_minimized_as_one_minus_it(tmp_path):
    config = TrainConfig(hidden=(16,), epochs=1, metric="balanced_accuracy")
    train(config, tmp_path / "run", progress=False, plot=False)
    meta = load_run(tmp_path / "run").meta
    assert meta["dev_error"] == pytest.approx(1 - meta["dev_metrics"]["balanced_accuracy"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metric": "accuracy"}, "'metric' = 'accuracy' is invalid"),
        ({"class_weight": "inverse"}, "'class_weight' = 'inverse' is invalid"),
    ],
)
def test_bad_metric_and_class_weight_values_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(changes)


def test_a_metric_of_the_other_task_is_named(tmp_path):
    with pytest.raises(ValueError, match="metric 'r2' does not apply to classification"):
        train(TrainConfig(metric="r2", epochs=1), tmp_path / "run", progress=False)
