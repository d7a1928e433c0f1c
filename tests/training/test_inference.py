"""predict(): the inference path against the formula written out by hand, on hand-made params."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training.inference import predict

META = {"task": "classification", "activation": "tanh", "batchnorm": True, "epsilon": 1e-3}


def hand_made_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "input.mean": np.array([10.0, -5.0, 0.0]),
        "input.std": np.array([2.0, 0.5, 1.0]),
        "hidden1.W": rng.standard_normal((3, 4)),
        "hidden1.gamma": rng.uniform(0.5, 2.0, 4),
        "hidden1.beta": rng.standard_normal(4),
        "hidden1.running_mean": rng.standard_normal(4),
        "hidden1.running_var": rng.uniform(0.1, 3.0, 4),
        "output.W": rng.standard_normal((4, 2)),
        "output.b": rng.standard_normal(2),
    }


def by_hand(params: dict[str, np.ndarray], x_raw: np.ndarray) -> np.ndarray:
    x = (x_raw - params["input.mean"]) / params["input.std"]
    z = x @ params["hidden1.W"]
    z_norm = (z - params["hidden1.running_mean"]) / np.sqrt(params["hidden1.running_var"] + 1e-3)
    a = np.tanh(params["hidden1.gamma"] * z_norm + params["hidden1.beta"])
    scores = a @ params["output.W"] + params["output.b"]
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_classification_matches_the_formula_and_ignores_batch_company():
    rng = np.random.default_rng(0)
    params = hand_made_params(rng)
    x_raw = rng.normal([10, -5, 0], [2, 0.5, 1], (6, 3))
    probabilities = predict(params, META, x_raw)
    np.testing.assert_allclose(probabilities, by_hand(params, x_raw), rtol=1e-12)
    np.testing.assert_allclose(predict(params, META, x_raw[2:3])[0], probabilities[2], rtol=1e-12)


def test_regression_returns_values_in_target_units():
    rng = np.random.default_rng(1)
    params = hand_made_params(rng)
    params["target.mean"], params["target.std"] = np.array([100.0, -1.0]), np.array([5.0, 0.1])
    x_raw = rng.standard_normal((4, 3))
    y = predict(params, {**META, "task": "regression"}, x_raw)
    x = (x_raw - params["input.mean"]) / params["input.std"]
    z = x @ params["hidden1.W"]
    z_norm = (z - params["hidden1.running_mean"]) / np.sqrt(params["hidden1.running_var"] + 1e-3)
    a = np.tanh(params["hidden1.gamma"] * z_norm + params["hidden1.beta"])
    standardized = a @ params["output.W"] + params["output.b"]
    np.testing.assert_allclose(y, standardized * [5.0, 0.1] + [100.0, -1.0], rtol=1e-12)


def test_without_batchnorm_the_bias_is_used():
    params = {
        "input.mean": np.zeros(2),
        "input.std": np.ones(2),
        "hidden1.W": np.eye(2),
        "hidden1.b": np.array([1.0, -10.0]),
        "output.W": np.eye(2),
        "output.b": np.zeros(2),
    }
    meta = {**META, "activation": "relu", "batchnorm": False}
    probabilities = predict(params, meta, np.array([[0.0, 0.0]]))
    # hidden = relu([1, −10]) = [1, 0] -> softmax([1, 0])
    np.testing.assert_allclose(probabilities, [[np.e / (np.e + 1), 1 / (np.e + 1)]])


def test_the_output_dtype_follows_the_input():
    params = hand_made_params(np.random.default_rng(2))
    x_raw = np.ones((2, 3), dtype=np.float32)
    assert predict(params, META, x_raw).dtype == np.float32
    assert predict(params, META, x_raw.astype(np.float64)).dtype == np.float64


def test_a_wrong_feature_count_is_refused():
    params = hand_made_params(np.random.default_rng(3))
    with pytest.raises(ValueError, match=r"x_raw has shape \(2, 4\), expected \(N, 3\)"):
        predict(params, META, np.ones((2, 4)))
