"""Optimizers: each update against its formula, convergence, state by name, bad settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnserve.training import optim


def one_step(name: str, lr: float = 0.1, **settings):
    params = {"hidden1.W": np.array([1.0, -2.0]), "output.b": np.array([0.5])}
    grads = {"hidden1.W": np.array([0.4, -0.2]), "output.b": np.array([1.0])}
    state = optim.OptimizerState()
    optim.update(params, grads, state, optim.OptimizerSettings(name, **settings), lr)
    return params, grads, state


def test_sgd_step():
    params, _, state = one_step("sgd")
    np.testing.assert_allclose(params["hidden1.W"], [1.0 - 0.04, -2.0 + 0.02])
    assert state.step == 1 and state.slots == {}


def test_momentum_accumulates_velocity_per_parameter_name():
    params = {"hidden1.W": np.array([1.0])}
    state = optim.OptimizerState()
    settings = optim.OptimizerSettings("momentum", momentum=0.9)
    for _ in range(2):
        optim.update(params, {"hidden1.W": np.array([1.0])}, state, settings, 0.1)
    # v1 = 1, v2 = 0.9 + 1 = 1.9; p = 1 − 0.1·(1 + 1.9)
    np.testing.assert_allclose(params["hidden1.W"], [1.0 - 0.29])
    np.testing.assert_allclose(state.slots["hidden1.W"]["velocity"], [1.9])


def test_rmsprop_first_step():
    params, grads, state = one_step("rmsprop", rho=0.9, epsilon=1e-8)
    square_avg = 0.1 * grads["hidden1.W"] ** 2
    expected = np.array([1.0, -2.0]) - 0.1 * grads["hidden1.W"] / (np.sqrt(square_avg) + 1e-8)
    np.testing.assert_allclose(params["hidden1.W"], expected)
    np.testing.assert_allclose(state.slots["hidden1.W"]["square_avg"], square_avg)


def test_adam_first_step_moves_each_weight_by_about_lr():
    # with bias correction the first step is lr·g/(|g| + ε') ≈ lr·sign(g)
    params, _, state = one_step("adam", lr=0.01)
    np.testing.assert_allclose(params["hidden1.W"], [0.99, -1.99], rtol=1e-6)
    np.testing.assert_allclose(params["output.b"], [0.49], rtol=1e-6)
    assert set(state.slots) == {"hidden1.W", "output.b"}
    assert set(state.slots["hidden1.W"]) == {"m", "v"}


@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adam"])
def test_each_optimizer_minimizes_a_quadratic(name):
    target = np.array([3.0, -1.0, 0.5], dtype=np.float32)
    params = {"output.b": np.zeros(3, dtype=np.float32)}
    state, settings = optim.OptimizerState(), optim.OptimizerSettings(name)
    lr = {"sgd": 0.1, "momentum": 0.02, "rmsprop": 0.01, "adam": 0.05}[name]
    for _ in range(1000):
        grads = {"output.b": params["output.b"] - target}
        optim.update(params, grads, state, settings, lr)
    np.testing.assert_allclose(params["output.b"], target, atol=2e-2)
    assert params["output.b"].dtype == np.float32


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf])
def test_learning_rate_must_be_positive_and_finite(lr):
    with pytest.raises(ValueError, match=r"learning rate = .* must be a finite number > 0"):
        one_step("sgd", lr=lr)
