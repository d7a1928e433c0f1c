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


def test_adamw_two_steps_by_hand():
    """Decoupled decay: W ← W·(1 − lr·λ), then Adam's step; biases are not decayed."""
    lr, decay, beta1, beta2, eps = 0.1, 0.5, 0.9, 0.999, 1e-8
    params = {"hidden1.W": np.array([1.0, -2.0]), "output.b": np.array([0.5])}
    settings = optim.OptimizerSettings("adam", beta1, beta2, eps, weight_decay=decay)
    state = optim.OptimizerState()
    steps = [
        {"hidden1.W": np.array([0.4, -0.2]), "output.b": np.array([1.0])},
        {"hidden1.W": np.array([-0.1, 0.3]), "output.b": np.array([0.5])},
    ]
    w, b = np.array([1.0, -2.0]), np.array([0.5])
    m_w = v_w = np.zeros(2)
    m_b = v_b = np.zeros(1)
    for t, grads in enumerate(steps, start=1):
        optim.update(params, {k: g.copy() for k, g in grads.items()}, state, settings, lr)
        w = w * (1 - lr * decay)
        m_w = beta1 * m_w + (1 - beta1) * grads["hidden1.W"]
        v_w = beta2 * v_w + (1 - beta2) * grads["hidden1.W"] ** 2
        w = w - lr * (m_w / (1 - beta1**t)) / (np.sqrt(v_w / (1 - beta2**t)) + eps)
        m_b = beta1 * m_b + (1 - beta1) * grads["output.b"]
        v_b = beta2 * v_b + (1 - beta2) * grads["output.b"] ** 2
        b = b - lr * (m_b / (1 - beta1**t)) / (np.sqrt(v_b / (1 - beta2**t)) + eps)
    np.testing.assert_allclose(params["hidden1.W"], w, rtol=1e-12)
    np.testing.assert_allclose(params["output.b"], b, rtol=1e-12)
    # step 1 by hand, written out: W·(1 − 0.05) − 0.1·sign(g) (Adam's first step is ±lr)
    first = {"hidden1.W": np.array([1.0, -2.0])}
    optim.update(first, {"hidden1.W": np.array([0.4, -0.2])}, optim.OptimizerState(), settings, lr)
    np.testing.assert_allclose(first["hidden1.W"], [0.95 - 0.1, -1.9 + 0.1], atol=1e-8)
