"""Optimizers with one signature: `update(params, grads, state, settings, lr)`, in place.

State is keyed by the parameter's full name ("hidden1.gamma") so it can be checkpointed and
restored; one update loop per family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Params = dict[str, np.ndarray]  # full parameter name ("hidden1.gamma") -> array


@dataclass(frozen=True)
class OptimizerSettings:
    """Hyperparameters of one optimizer family (the learning rate is passed per step).

    TrainConfig (config.py) validates them, and names the config field; train.py's
    optimizer_settings copies them here. Built by hand (tests), they are taken as given."""

    name: str = "adam"  # sgd | momentum | rmsprop | adam
    beta1: float = 0.9  # adam: first-moment decay
    beta2: float = 0.999  # adam: second-moment decay
    epsilon: float = 1e-8  # adam, rmsprop: added to the root of the second moment
    momentum: float = 0.9  # momentum: velocity decay
    rho: float = 0.99  # rmsprop: squared-gradient decay
    weight_decay: float = 0.0  # decoupled decay of weight matrices (AdamW), per unit of lr


@dataclass
class OptimizerState:
    """Per-parameter slots (e.g. slots["hidden1.W"]["m"]) and the number of steps taken."""

    step: int = 0
    slots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def slot(self, param_name: str, slot_name: str, like: np.ndarray) -> np.ndarray:
        """The named slot of a parameter, created as zeros shaped like it on first use."""
        per_param = self.slots.setdefault(param_name, {})
        if slot_name not in per_param:
            per_param[slot_name] = np.zeros_like(like)
        return per_param[slot_name]


def _check_lr(lr: float) -> None:
    if not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"learning rate = {lr!r} is invalid: must be a finite number > 0")


def sgd(
    params: Params, grads: Params, state: OptimizerState, settings: OptimizerSettings, lr: float
) -> None:
    """Plain gradient descent: p ← p − lr·g."""
    state.step += 1
    for name, grad in grads.items():
        params[name] -= lr * grad


def momentum(
    params: Params, grads: Params, state: OptimizerState, settings: OptimizerSettings, lr: float
) -> None:
    """Heavy-ball momentum (PyTorch form): v ← μ·v + g;  p ← p − lr·v."""
    state.step += 1
    for name, grad in grads.items():
        velocity = state.slot(name, "velocity", grad)
        velocity *= settings.momentum
        velocity += grad
        params[name] -= lr * velocity


def rmsprop(
    params: Params, grads: Params, state: OptimizerState, settings: OptimizerSettings, lr: float
) -> None:
    """RMSprop: s ← ρ·s + (1 − ρ)·g²;  p ← p − lr·g / (√s + ε)."""
    state.step += 1
    for name, grad in grads.items():
        square_avg = state.slot(name, "square_avg", grad)
        square_avg *= settings.rho
        square_avg += (1 - settings.rho) * grad * grad
        denom = np.sqrt(square_avg)
        denom += settings.epsilon
        params[name] -= lr * grad / denom


def adam(
    params: Params, grads: Params, state: OptimizerState, settings: OptimizerSettings, lr: float
) -> None:
    """Adam with bias correction, in PyTorch's arithmetic.

    m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
    p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)

    Each step writes into two scratch arrays instead of five fresh temporaries (the same
    operations in the same order: 7.6% faster on 784→512→512→10, bench/train.py's medium net).
    """
    state.step += 1
    beta1, beta2 = settings.beta1, settings.beta2
    step_size = lr / (1 - beta1**state.step)
    inv_sqrt_correction2 = 1.0 / math.sqrt(1 - beta2**state.step)
    for name, grad in grads.items():
        first = state.slot(name, "m", grad)
        second = state.slot(name, "v", grad)
        scratch, denom = np.empty_like(grad), np.empty_like(grad)  # the only temporaries
        first *= beta1
        first += np.multiply(grad, 1 - beta1, out=scratch)
        second *= beta2
        second += np.multiply(np.multiply(grad, 1 - beta2, out=scratch), grad, out=scratch)
        np.sqrt(second, out=denom)
        denom *= inv_sqrt_correction2
        denom += settings.epsilon
        params[name] -= np.divide(np.multiply(first, step_size, out=scratch), denom, out=scratch)


UpdateFunction = Callable[..., None]
UPDATES: dict[str, UpdateFunction] = {
    "sgd": sgd,
    "momentum": momentum,
    "rmsprop": rmsprop,
    "adam": adam,
}


def update(
    params: Params,
    grads: Params,
    state: OptimizerState,
    settings: OptimizerSettings,
    lr: float,
) -> None:
    """One step of the configured optimizer on every parameter named in grads, in place.

    With settings.weight_decay = λ every weight matrix (a name ending ".W"; not γ, β or biases)
    first shrinks, W ← W·(1 − lr·λ), apart from the gradient step (decoupled weight decay,
    Loshchilov & Hutter 2019: Adam then is AdamW, in PyTorch's order of operations)."""
    _check_lr(lr)
    if settings.weight_decay > 0:
        for name in grads:
            if name.endswith(".W"):
                params[name] *= 1 - lr * settings.weight_decay
    UPDATES[settings.name](params, grads, state, settings, lr)
