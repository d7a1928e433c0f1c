"""Parity with PyTorch (BatchNorm1d, Linear, cross-entropy, Adam) on golden fixtures.

The fixtures come from scripts/make_torch_fixtures.py (torch 2.13.0, float64); torch is not
imported here. Tolerance: both sides compute in float64, so forward values, gradients, running
statistics and Adam-updated parameters agree to rtol 1e-9, atol 1e-12 (differences are only in
summation order). The state after three Adam steps uses atol 1e-10: Adam divides by √v + ε,
which amplifies rounding where v is tiny.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnserve.training import layers, model, optim
from bnserve.training.layers import BatchNormSettings, RunningStats

FIXTURE = Path(__file__).parent / "fixtures" / "torch_bn_mlp.npz"
RTOL, ATOL, STATE_ATOL = 1e-9, 1e-12, 1e-10
SPEC = model.NetSpec(1, "relu", True, BatchNormSettings(momentum=0.1, epsilon=1e-5, unbiased=True))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def initial_params(golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    params = {
        name.removeprefix("initial."): value.copy()
        for name, value in golden.items()
        if name.startswith("initial.")
    }
    params["hidden1.running_mean"] = np.zeros(params["hidden1.gamma"].shape)
    params["hidden1.running_var"] = np.ones(params["hidden1.gamma"].shape)
    return params


def test_fixture_settings_match_the_test(golden):
    momentum, epsilon, *_ = golden["settings"]
    assert (momentum, epsilon) == (SPEC.bn.momentum, SPEC.bn.epsilon)


def test_batchnorm_forward_and_backward_match_torch(golden):
    params = initial_params(golden)
    z, _ = layers.affine_forward(golden["step1.x"], params["hidden1.W"])
    np.testing.assert_allclose(z, golden["step1.z"], rtol=RTOL, atol=ATOL)
    running = RunningStats(params["hidden1.running_mean"], params["hidden1.running_var"])
    out, cache, new_running = layers.batchnorm_forward(
        z, params["hidden1.gamma"], params["hidden1.beta"], running, SPEC.bn, train=True
    )
    np.testing.assert_allclose(out, golden["step1.bn_out"], rtol=RTOL, atol=ATOL)
    dz, _, _ = layers.batchnorm_backward(golden["step1.dbn_out"], cache)
    np.testing.assert_allclose(dz, golden["step1.dz"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        new_running.var, golden["step1.after.hidden1.running_var"], rtol=RTOL, atol=ATOL
    )


def test_network_loss_and_gradients_match_torch(golden):
    params = initial_params(golden)
    cost, grads, running = model.loss_and_grads(
        params, golden["step1.x"], golden["step1.labels"], SPEC, task="classification"
    )
    assert cost == pytest.approx(float(golden["step1.loss"]), rel=RTOL)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, golden[f"step1.grad.{name}"], rtol=RTOL, atol=ATOL)
    for name, value in running.items():
        np.testing.assert_allclose(value, golden[f"step1.after.{name}"], rtol=RTOL, atol=ATOL)


def test_adam_steps_and_running_statistics_match_torch(golden):
    _, _, lr, beta1, beta2, adam_epsilon = golden["settings"]
    settings = optim.OptimizerSettings("adam", beta1=beta1, beta2=beta2, epsilon=adam_epsilon)
    params, state = initial_params(golden), optim.OptimizerState()
    learnable = model.learnable_names(params)
    for step in (1, 2, 3):
        prefix = f"step{step}"
        _, grads, running = model.loss_and_grads(
            params, golden[f"{prefix}.x"], golden[f"{prefix}.labels"], SPEC, task="classification"
        )
        params.update(running)
        optim.update(params, {name: grads[name] for name in learnable}, state, settings, lr)
        for name, value in params.items():
            np.testing.assert_allclose(
                value, golden[f"{prefix}.after.{name}"], rtol=RTOL, atol=STATE_ATOL, err_msg=name
            )


def test_inference_with_running_statistics_matches_torch_eval(golden):
    params = initial_params(golden)
    for name in params:
        params[name] = golden[f"step3.after.{name}"]
    scores, _, _ = model.forward(params, golden["eval.x"], SPEC, train=False)
    np.testing.assert_allclose(scores, golden["eval.scores"], rtol=RTOL, atol=ATOL)
