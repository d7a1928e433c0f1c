"""training/model.py: gradient check through the whole net, inference, population statistics."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training import model
from bnserve.training.layers import BatchNormSettings
from tests.support.gradcheck import numerical_gradient, relative_error

TOLERANCE = 1e-6


def make_net(batchnorm: bool, activation: str = "relu", sizes=(5, 6, 4, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    params = model.init_params(
        list(sizes), activation=activation, batchnorm=batchnorm, rng=rng, dtype=np.float64
    )
    for name in params:  # non-trivial γ, β, b so their gradients are exercised
        if name.endswith((".gamma", ".beta", ".b")):
            params[name] = rng.uniform(0.5, 1.5, params[name].shape)
    return params


@pytest.mark.parametrize(
    ("batchnorm", "activation", "task", "l2", "dropout"),
    [
        (True, "relu", "classification", 0.0, 0.0),
        (True, "tanh", "classification", 0.1, 0.0),
        (True, "sigmoid", "regression", 0.0, 0.3),
        (False, "relu", "classification", 0.05, 0.2),
        (False, "tanh", "regression", 0.0, 0.0),
    ],
)
def test_whole_network_gradients_match_finite_differences(batchnorm, activation, task, l2, dropout):
    params = make_net(batchnorm, activation)
    spec = model.NetSpec(2, activation, batchnorm, BatchNormSettings(), dropout)
    data_rng = np.random.default_rng(1)
    x = data_rng.standard_normal((7, 5))
    y = data_rng.integers(0, 3, 7) if task == "classification" else data_rng.standard_normal((7, 3))

    def cost_and_grads():
        # a fresh generator with the same seed: identical dropout masks on every evaluation
        return model.loss_and_grads(
            params, x, y, spec, task=task, l2=l2, rng=np.random.default_rng(5)
        )

    _, grads, _ = cost_and_grads()
    assert set(grads) == set(model.learnable_names(params))
    for name, grad in grads.items():
        numeric = numerical_gradient(lambda: cost_and_grads()[0], params[name])
        assert relative_error(grad, numeric) < TOLERANCE, name


def test_learnable_names_exclude_running_statistics():
    params = make_net(batchnorm=True)
    assert model.learnable_names(params) == [
        "hidden1.W",
        "hidden1.gamma",
        "hidden1.beta",
        "hidden2.W",
        "hidden2.gamma",
        "hidden2.beta",
        "output.W",
        "output.b",
    ]


def test_training_forward_returns_new_running_statistics_and_leaves_params_alone():
    params = make_net(batchnorm=True)
    before = {name: value.copy() for name, value in params.items()}
    spec = model.NetSpec(2, "relu", True)
    x = np.random.default_rng(2).standard_normal((9, 5))
    _, _, running = model.forward(params, x, spec, train=True)
    assert set(running) == {
        "hidden1.running_mean",
        "hidden1.running_var",
        "hidden2.running_mean",
        "hidden2.running_var",
    }
    assert not np.allclose(running["hidden1.running_mean"], 0.0)
    for name, value in params.items():
        np.testing.assert_array_equal(value, before[name])


def test_inference_scores_each_row_independently_of_the_batch():
    params = make_net(batchnorm=True)
    spec = model.NetSpec(2, "relu", True)
    x = np.random.default_rng(3).standard_normal((12, 5))
    batch_scores, _, _ = model.forward(params, x, spec, train=False)
    for row in range(len(x)):
        single, _, _ = model.forward(params, x[row : row + 1], spec, train=False)
        np.testing.assert_allclose(single[0], batch_scores[row], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_population_statistics_are_exact_over_the_whole_set(unbiased):
    params = make_net(batchnorm=True)
    spec = model.NetSpec(2, "relu", True, BatchNormSettings(unbiased=unbiased))
    x = np.random.default_rng(4).normal(1.0, 2.0, (50, 5))
    stats = model.population_statistics(params, x, spec)
    ddof = 1 if unbiased else 0
    z1 = x @ params["hidden1.W"]
    np.testing.assert_allclose(stats["hidden1.running_mean"], z1.mean(axis=0))
    np.testing.assert_allclose(stats["hidden1.running_var"], z1.var(axis=0, ddof=ddof))
    normalized = (z1 - z1.mean(axis=0)) / np.sqrt(stats["hidden1.running_var"] + 1e-5)
    a1 = np.maximum(normalized * params["hidden1.gamma"] + params["hidden1.beta"], 0)
    z2 = a1 @ params["hidden2.W"]
    np.testing.assert_allclose(stats["hidden2.running_mean"], z2.mean(axis=0))
    np.testing.assert_allclose(stats["hidden2.running_var"], z2.var(axis=0, ddof=ddof))


def test_param_shapes_state_the_params_npz_layout():
    shapes = model.param_shapes([5, 6, 4, 3], batchnorm=True, task="classification")
    assert shapes == {
        "input.mean": (5,),
        "input.std": (5,),
        "hidden1.W": (5, 6),
        "hidden1.gamma": (6,),
        "hidden1.beta": (6,),
        "hidden1.running_mean": (6,),
        "hidden1.running_var": (6,),
        "hidden2.W": (6, 4),
        "hidden2.gamma": (4,),
        "hidden2.beta": (4,),
        "hidden2.running_mean": (4,),
        "hidden2.running_var": (4,),
        "output.W": (4, 3),
        "output.b": (3,),
    }
    plain = model.param_shapes([5, 6, 2], batchnorm=False, task="regression")
    assert plain == {
        "input.mean": (5,),
        "input.std": (5,),
        "hidden1.W": (5, 6),
        "hidden1.b": (6,),
        "output.W": (6, 2),
        "output.b": (2,),
        "target.mean": (2,),
        "target.std": (2,),
    }


@pytest.mark.parametrize("batchnorm", [True, False])
def test_init_params_makes_exactly_the_layer_shapes(batchnorm):
    params = make_net(batchnorm=batchnorm)
    expected = model.layer_shapes([5, 6, 4, 3], batchnorm=batchnorm)
    assert list(params) == list(expected)
    assert {name: value.shape for name, value in params.items()} == expected
    assert model.hidden_count(params) == 2
    assert model.layer_names(2) == ["hidden1", "hidden2", "output"]
