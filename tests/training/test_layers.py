"""Each layer's backward pass against centred finite differences (float64), and BN semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnserve.training import layers
from bnserve.training.layers import BatchNormSettings, RunningStats
from tests.support.gradcheck import numerical_gradient, relative_error

TOLERANCE = 1e-6  # relative error of analytic vs numeric gradients in float64


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def check_layer_gradients(forward, backward, inputs: dict[str, np.ndarray], rng) -> None:
    """Compare backward(dout) with finite differences of sum(forward(**inputs) * dout)."""
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape)
    analytic = backward(dout, cache)

    def scalar() -> float:
        return float(np.sum(forward(**inputs)[0] * dout))

    for name, grad in zip(inputs, analytic, strict=True):
        numeric = numerical_gradient(scalar, inputs[name])
        assert relative_error(grad, numeric) < TOLERANCE, name


def test_affine_gradients(rng):
    inputs = {
        "x": rng.standard_normal((5, 4)),
        "W": rng.standard_normal((4, 3)),
        "b": rng.standard_normal(3),
    }
    check_layer_gradients(layers.affine_forward, layers.affine_backward, inputs, rng)


def test_affine_backward_skips_the_input_gradient_on_request(rng):
    x, W = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    _, cache = layers.affine_forward(x, W)
    dx, dW, _ = layers.affine_backward(np.ones((5, 3)), cache, input_grad=False)
    assert dx is None
    np.testing.assert_allclose(dW, x.T @ np.ones((5, 3)))


def batchnorm_train(z, gamma, beta):
    running = RunningStats(np.zeros(z.shape[1]), np.ones(z.shape[1]))
    out, cache, _ = layers.batchnorm_forward(
        z, gamma, beta, running, BatchNormSettings(), train=True
    )
    return out, cache


def test_batchnorm_gradients(rng):
    inputs = {
        "z": rng.normal(3.0, 2.0, (6, 4)),
        "gamma": rng.uniform(0.5, 1.5, 4),
        "beta": rng.standard_normal(4),
    }
    check_layer_gradients(batchnorm_train, layers.batchnorm_backward, inputs, rng)


def batchnorm_backward_staged(dout, z, gamma, epsilon):
    """The computational-graph BN backward, one node at a time (cs231n's first derivation)."""
    m = z.shape[0]
    mean = z.mean(axis=0)
    centered = z - mean
    var = (centered**2).mean(axis=0)
    std = np.sqrt(var + epsilon)
    x_hat = centered / std
    dx_hat = dout * gamma
    dcentered = dx_hat / std
    dstd = -np.sum(dx_hat * centered, axis=0) / std**2
    dvar = dstd / (2 * std)
    dcentered += 2 * centered * dvar / m
    dz = dcentered - dcentered.mean(axis=0)
    return dz, np.sum(dout * x_hat, axis=0), dout.sum(axis=0)


def test_closed_form_batchnorm_backward_equals_the_staged_one(rng):
    z, gamma, beta = rng.normal(-1, 3, (16, 5)), rng.uniform(0.5, 2, 5), rng.standard_normal(5)
    _, cache = batchnorm_train(z, gamma, beta)
    dout = rng.standard_normal(z.shape)
    closed = layers.batchnorm_backward(dout, cache)
    staged = batchnorm_backward_staged(dout, z, gamma, BatchNormSettings().epsilon)
    for closed_grad, staged_grad in zip(closed, staged, strict=True):
        np.testing.assert_allclose(closed_grad, staged_grad, rtol=1e-10, atol=1e-12)


def test_batchnorm_training_output_is_normalized_then_scaled(rng):
    z = rng.normal(5.0, 3.0, (64, 3))
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 3.0])
    out, _ = batchnorm_train(z, gamma, beta)
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-12)
    # biased variance inside √(σ² + ε): the std of the output is γ·σ/√(σ² + ε)
    expected_std = gamma * z.std(axis=0) / np.sqrt(z.var(axis=0) + 1e-5)
    np.testing.assert_allclose(out.std(axis=0), expected_std, rtol=1e-10)


@pytest.mark.parametrize("unbiased", [True, False])
def test_running_statistics_follow_the_pytorch_momentum_formula(rng, unbiased):
    z = rng.normal(2.0, 3.0, (10, 4))
    running = RunningStats(np.full(4, 0.5), np.full(4, 2.0))
    settings = BatchNormSettings(momentum=0.1, unbiased=unbiased)
    _, _, new = layers.batchnorm_forward(z, np.ones(4), np.zeros(4), running, settings, train=True)
    batch_var = z.var(axis=0, ddof=1 if unbiased else 0)
    np.testing.assert_allclose(new.mean, 0.9 * 0.5 + 0.1 * z.mean(axis=0))
    np.testing.assert_allclose(new.var, 0.9 * 2.0 + 0.1 * batch_var)


def test_batchnorm_with_a_constant_column_does_not_divide_by_zero():
    z = np.column_stack([np.full(4, 3.0), np.arange(4.0)])
    out, cache = batchnorm_train(z, np.ones(2), np.zeros(2))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0], 0.0)
    dz, _, _ = layers.batchnorm_backward(np.ones_like(z), cache)
    assert np.all(np.isfinite(dz))


def test_batchnorm_inference_uses_only_the_running_statistics(rng):
    z = rng.standard_normal((8, 3))
    running = RunningStats(np.array([1.0, -1.0, 0.0]), np.array([4.0, 1.0, 0.25]))
    gamma, beta = np.array([2.0, 1.0, 1.0]), np.array([0.0, 1.0, -1.0])
    out, cache, unchanged = layers.batchnorm_forward(
        z, gamma, beta, running, BatchNormSettings(epsilon=1e-5), train=False
    )
    assert cache is None and unchanged is running
    expected = (z - running.mean) / np.sqrt(running.var + 1e-5) * gamma + beta
    np.testing.assert_allclose(out, expected)
    one_row, _, _ = layers.batchnorm_forward(
        z[3:4], gamma, beta, running, BatchNormSettings(), train=False
    )
    np.testing.assert_allclose(one_row, out[3:4])


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_activation_gradients(rng, name):
    forward, backward = layers.ACTIVATION_FUNCTIONS[name]
    x = rng.standard_normal((5, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU's kink out of the finite differences
    check_layer_gradients(forward, lambda dout, cache: (backward(dout, cache),), {"x": x}, rng)


def test_sigmoid_is_stable_for_large_inputs():
    out, _ = layers.sigmoid_forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_dropout_gradient_and_scaling(rng):
    x = rng.standard_normal((400, 50))
    out, mask = layers.dropout_forward(x, 0.25, np.random.default_rng(3))
    kept = mask != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(out[kept], x[kept] / 0.75)
    dout = rng.standard_normal(x.shape)
    np.testing.assert_allclose(layers.dropout_backward(dout, mask), dout * kept / 0.75)


def test_softmax_cross_entropy_value_and_gradient(rng):
    scores = rng.standard_normal((6, 4))
    labels = np.array([0, 3, 1, 1, 2, 0])
    loss, dscores = layers.softmax_cross_entropy(scores.copy(), labels)
    probabilities = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(probabilities[np.arange(6), labels])))
    numeric = numerical_gradient(lambda: layers.softmax_cross_entropy(scores, labels)[0], scores)
    assert relative_error(dscores, numeric) < TOLERANCE


@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_loss_and_gradient(rng, weighted):
    scores = rng.standard_normal((6, 4))
    labels = np.array([0, 3, 1, 1, 2, 0])
    weights = rng.uniform(0.5, 2.0, 6) if weighted else None
    epsilon = 0.1
    loss, dscores = layers.softmax_cross_entropy(scores.copy(), labels, weights, epsilon)
    log_p = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    target = np.full((6, 4), epsilon / 4)  # (1 − ε)·one-hot + ε/C
    target[np.arange(6), labels] += 1 - epsilon
    per_example = -(target * log_p).sum(axis=1) * (1.0 if weights is None else weights)
    assert loss == pytest.approx(per_example.mean())
    numeric = numerical_gradient(
        lambda: layers.softmax_cross_entropy(scores, labels, weights, epsilon)[0], scores
    )
    assert relative_error(dscores, numeric) < TOLERANCE
    plain = layers.softmax_cross_entropy(scores.copy(), labels, weights)[0]
    assert loss != pytest.approx(plain)  # smoothing changes the loss


def test_softmax_cross_entropy_survives_huge_scores():
    loss, dscores = layers.softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(1000.0)
    assert np.all(np.isfinite(dscores))


def test_mse_value_and_gradient(rng):
    predictions, targets = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    loss, dpred = layers.mse_loss(predictions.copy(), targets)
    assert loss == pytest.approx(np.mean((predictions - targets) ** 2))
    numeric = numerical_gradient(lambda: layers.mse_loss(predictions, targets)[0], predictions)
    assert relative_error(dpred, numeric) < TOLERANCE


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(2, 20),
    units=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-2, 1e2),
)
def test_closed_form_equals_staged_backward_for_any_shape(rows, units, seed, scale):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (rows, units))
    gamma, beta = rng.uniform(0.1, 3, units), rng.standard_normal(units)
    _, cache = batchnorm_train(z, gamma, beta)
    dout = rng.standard_normal(z.shape)
    closed = layers.batchnorm_backward(dout, cache)
    staged = batchnorm_backward_staged(dout, z, gamma, BatchNormSettings().epsilon)
    for closed_grad, staged_grad in zip(closed, staged, strict=True):
        np.testing.assert_allclose(closed_grad, staged_grad, rtol=1e-7, atol=1e-9)
