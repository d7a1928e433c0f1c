"""The fold is exact in float64: folded affine layers == the unfolded numpy inference path."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from bnserve.export.fold import (
    AffineLayer,
    BatchNormStats,
    LinearLayer,
    fold_batchnorm,
    fold_input_standardization,
    fold_layers,
    fold_params,
    fold_target_destandardization,
)
from bnserve.export.network import spec_from_run
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from tests.support.folded_forward import forward_folded

EXACT = 1e-10  # float64 folding only reorders a few multiplications


def _batchnorm_inference(z, gamma, beta, running_mean, running_var, epsilon):
    return gamma * (z - running_mean) / np.sqrt(running_var + epsilon) + beta


def test_fold_batchnorm_equals_affine_then_batchnorm() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 7))
    weight = rng.normal(size=(7, 5))
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
    running_mean, running_var = rng.normal(size=5), rng.uniform(0.1, 3, 5)

    folded = fold_batchnorm(weight, gamma, beta, running_mean, running_var, 1e-5)

    expected = _batchnorm_inference(a @ weight, gamma, beta, running_mean, running_var, 1e-5)
    np.testing.assert_allclose(a @ folded.weight + folded.bias, expected, rtol=0, atol=EXACT)


def test_fold_batchnorm_keeps_a_bias_before_the_norm() -> None:
    rng = np.random.default_rng(2)
    a, weight, bias = rng.normal(size=(20, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    running_mean, running_var = rng.normal(size=3), rng.uniform(0.1, 3, 3)

    folded = fold_batchnorm(weight, gamma, beta, running_mean, running_var, 1e-3, bias=bias)

    expected = _batchnorm_inference(a @ weight + bias, gamma, beta, running_mean, running_var, 1e-3)
    np.testing.assert_allclose(a @ folded.weight + folded.bias, expected, rtol=0, atol=EXACT)


def test_fold_batchnorm_scales_columns_not_rows() -> None:
    # W is (in, out): unit j's scale must multiply column j. A non-square W catches a mix-up.
    weight = np.ones((2, 3))
    folded = fold_batchnorm(
        weight, np.array([1.0, 2.0, 3.0]), np.zeros(3), np.zeros(3), np.ones(3), 0.0
    )
    np.testing.assert_array_equal(folded.weight, [[1, 2, 3], [1, 2, 3]])


def test_fold_input_standardization_takes_raw_features() -> None:
    rng = np.random.default_rng(3)
    x_raw = rng.normal(10, 4, size=(30, 6))
    mean, std = rng.normal(10, 1, 6), rng.uniform(0.5, 5, 6)
    layer = AffineLayer(rng.normal(size=(6, 4)), rng.normal(size=4))

    folded = fold_input_standardization(layer, mean, std)

    expected = ((x_raw - mean) / std) @ layer.weight + layer.bias
    np.testing.assert_allclose(x_raw @ folded.weight + folded.bias, expected, rtol=0, atol=EXACT)


def test_fold_target_destandardization_gives_target_units() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(30, 5))
    layer = AffineLayer(rng.normal(size=(5, 2)), rng.normal(size=2))
    target_mean, target_std = np.array([120.0, -0.5]), np.array([40.0, 0.01])

    folded = fold_target_destandardization(layer, target_mean, target_std)

    expected = (a @ layer.weight + layer.bias) * target_std + target_mean
    np.testing.assert_allclose(a @ folded.weight + folded.bias, expected, rtol=0, atol=EXACT)


NETWORKS = [
    pytest.param({"hidden": (5,)}, id="shallow-relu-bn"),
    pytest.param({"hidden": (32, 16, 16, 8), "activation": "tanh"}, id="deep-tanh-bn"),
    pytest.param({"hidden": (12, 12), "activation": "sigmoid"}, id="sigmoid-bn"),
    pytest.param({"hidden": (12, 12), "batchnorm": False}, id="no-bn"),
    pytest.param({"task": "regression", "outputs": 3, "hidden": (16, 8)}, id="regression-T3-bn"),
    pytest.param(
        {"task": "regression", "outputs": 2, "batchnorm": False, "activation": "tanh"},
        id="regression-T2-no-bn",
    ),
]


def _fold_run(run_dir: Path):
    run = load_run(run_dir)
    params64 = {name: value.astype(np.float64) for name, value in run.params.items()}
    network = fold_params(params64, spec_from_run(run.meta, run.config))
    return run, params64, network


@pytest.mark.parametrize("fields", NETWORKS)
def test_folded_network_equals_numpy_inference_path_in_float64(synthetic_run, fields) -> None:
    run, params64, network = _fold_run(synthetic_run(**fields))
    x_raw = np.asarray(run.heldout_x, dtype=np.float64)

    folded = forward_folded(network, x_raw)
    unfolded = predict(params64, run.meta, x_raw)

    assert folded.shape == unfolded.shape
    np.testing.assert_allclose(folded, unfolded, rtol=0, atol=EXACT)


def test_folded_trained_runs_equal_numpy_inference_path_in_float64(trained_runs) -> None:
    for run_dir in trained_runs.values():
        run, params64, network = _fold_run(run_dir)
        x_raw = np.asarray(run.heldout_x, dtype=np.float64)
        np.testing.assert_allclose(
            forward_folded(network, x_raw), predict(params64, run.meta, x_raw), rtol=0, atol=EXACT
        )


def test_fold_layers_with_batch_norm_after_some_layers_a_scaling_and_leaky_relu() -> None:
    """The chain `bnserve import` folds: BN (with a bias before it) after the first layer only,
    an elementwise scaling after the second, LeakyRelu between, raw-input normalization."""
    rng = np.random.default_rng(8)
    widths = (4, 6, 5, 3)
    w = [rng.normal(size=(i, o)) for i, o in itertools.pairwise(widths)]
    b = [rng.normal(size=o) for o in widths[1:]]
    norm = BatchNormStats(
        gamma=rng.uniform(0.5, 2, 6),
        beta=rng.normal(size=6),
        running_mean=rng.normal(size=6),
        running_var=rng.uniform(0.1, 2, 6),
        epsilon=1e-3,
    )
    scale, shift = rng.normal(size=5), rng.normal(size=5)
    mean, std = rng.normal(size=4), rng.uniform(0.5, 3, 4)
    layers = [
        LinearLayer(w[0], b[0], batchnorm=norm),
        LinearLayer(w[1], None, scale=scale, shift=shift),
        LinearLayer(w[2], b[2]),
    ]
    network = fold_layers(
        layers,
        input_mean=mean,
        input_std=std,
        activation="leaky_relu",
        task="regression",
        leaky_relu_alpha=0.2,
    )

    def leaky(z: np.ndarray) -> np.ndarray:
        return np.where(z >= 0, z, 0.2 * z)

    x = rng.normal(size=(40, 4)) * 3
    a = (x - mean) / std
    statistics = (norm.gamma, norm.beta, norm.running_mean, norm.running_var, 1e-3)
    a = leaky(_batchnorm_inference(a @ w[0] + b[0], *statistics))
    a = leaky((a @ w[1]) * scale + shift)
    expected = a @ w[2] + b[2]
    np.testing.assert_allclose(forward_folded(network, x), expected, atol=EXACT, rtol=0)
