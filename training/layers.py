"""Layers as pairs of pure functions: `*_forward(x, ...) -> (out, cache)`, `*_backward(dout, cache)`

Shapes: N examples in a mini-batch, D_in/D units. Arrays keep the dtype they come in (float32 when
training, float64 in gradient checks and reference inference). The cache holds exactly what the
backward pass needs, so nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class RunningStats(NamedTuple):
    """Frozen batch-norm statistics for test time: mean and variance of z, each (D,)."""

    mean: np.ndarray
    var: np.ndarray


@dataclass(frozen=True)
class BatchNormSettings:
    """How batch norm normalizes and how it updates its running statistics."""

    momentum: float = 0.1  # PyTorch convention: running = (1 − momentum)·running + momentum·batch
    epsilon: float = 1e-5  # inside the square root: z_norm = (z − μ) / √(σ² + ε)
    unbiased: bool = True  # the running variance takes the batch variance times m/(m − 1)


AffineCache = tuple[np.ndarray, np.ndarray]  # (x, W): what affine_backward needs
BatchNormCache = tuple[np.ndarray, np.ndarray, np.ndarray]  # (x_hat, gamma, inv_std)


def affine_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None
) -> tuple[np.ndarray, AffineCache]:
    """z = x @ W (+ b). x: (N, D_in), W: (D_in, D), b: (D,) or None -> z: (N, D)."""
    out = x @ W
    if b is not None:
        out += b
    return out, (x, W)


def affine_backward(
    dout: np.ndarray, cache: AffineCache, *, input_grad: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients (dx (N, D_in) or None when not wanted, dW (D_in, D), db (D,)) from dout (N, D)."""
    x, W = cache
    dx = dout @ W.T if input_grad else None
    return dx, x.T @ dout, dout.sum(axis=0)


def batchnorm_forward(
    z: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running: RunningStats,
    settings: BatchNormSettings,
    *,
    train: bool,
) -> tuple[np.ndarray, BatchNormCache | None, RunningStats]:
    """Batch norm of z (N, D) with learned gamma, beta (D,). Returns (out, cache, running').

    train=True: normalize with the mini-batch mean and biased variance (1/m) and return the
    running statistics moved toward this batch. train=False: normalize with `running` only, so an
    example's output never depends on the rest of the batch; running' is `running`, cache None.
    """
    if not train:
        scale = gamma / np.sqrt(running.var + settings.epsilon)
        out = (z - running.mean) * scale
        out += beta
        return out, None, running
    m = z.shape[0]
    mean = z.mean(axis=0)
    x_hat = z - mean
    var = np.einsum("ij,ij->j", x_hat, x_hat) / m
    inv_std = 1.0 / np.sqrt(var + settings.epsilon)
    x_hat *= inv_std
    out = x_hat * gamma
    out += beta
    batch_var = var * (m / (m - 1)) if settings.unbiased else var
    keep = 1.0 - settings.momentum
    new_running = RunningStats(
        keep * running.mean + settings.momentum * mean,
        keep * running.var + settings.momentum * batch_var,
    )
    return out, (x_hat, gamma, inv_std), new_running


def batchnorm_backward(
    dout: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form batch-norm backward: (dz (N, D), dgamma (D,), dbeta (D,)) from dout (N, D).

    dz = γ/(m·σ) · (m·dout − Σdout − x̂·Σ(dout·x̂)), with σ = √(σ²_B + ε).
    """
    x_hat, gamma, inv_std = cache
    m = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = np.einsum("ij,ij->j", dout, x_hat)
    dz = dout * m
    dz -= dbeta
    dz -= x_hat * dgamma
    dz *= gamma * (inv_std / m)
    return dz, dgamma, dbeta


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max(x, 0), elementwise; the cache is the output."""
    out = np.maximum(x, 0)
    return out, out


def relu_backward(dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dout (N, D) passed where the ReLU output was positive."""
    return dout * (out > 0)


def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tanh(x), elementwise; the cache is the output."""
    out = np.tanh(x)
    return out, out


def tanh_backward(dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dout · (1 − tanh²), from the cached output."""
    dx: np.ndarray = dout * (1 - out * out)
    return dx


def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1 / (1 + e^−x), computed without overflow for large |x|."""
    out: np.ndarray = np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)
    return out, out


def sigmoid_backward(dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dout · σ·(1 − σ), from the cached output."""
    dx: np.ndarray = dout * out * (1 - out)
    return dx


ACTIVATION_FUNCTIONS = {
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
}


def dropout_forward(
    x: np.ndarray, drop_probability: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Inverted dropout (training only): zero each unit with the probability, scale the rest.

    The kept units are scaled by 1/(1 − p), so inference needs no dropout code at all.
    """
    keep = 1.0 - drop_probability
    mask = (rng.random(x.shape, dtype=np.float32) < keep).astype(x.dtype)
    mask *= 1.0 / keep
    return x * mask, mask


def dropout_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """dout (N, D) through the same scaled mask as the forward pass."""
    dx: np.ndarray = dout * mask
    return dx


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of scores (N, C) -> probabilities (N, C)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp: np.ndarray = np.exp(shifted)
    exp /= exp.sum(axis=1, keepdims=True)
    return exp


def softmax_cross_entropy(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    smoothing: float = 0.0,
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of scores (N, C) against int labels (N,) and its gradient (N, C).

    Binary classification is the two-class case. weights (N,): each example's loss counts
    w_i times, loss = (1/N)·Σ w_i·(−Σ_c q_ic·log p_ic) (class weights: w_i = class_weight[y_i]).
    q_i is the one-hot label, or with label smoothing ε the mix (1 − ε)·one-hot + ε/C; the
    gradient is then w_i·(p_i − q_i)/N.
    """
    n, classes = scores.shape
    rows = np.arange(n)
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    per_example = np.log(sum_exp[:, 0]) - (1 - smoothing) * shifted[rows, labels]
    if smoothing:
        per_example -= (smoothing / classes) * shifted.sum(axis=1)
    if weights is not None:
        per_example = per_example * weights
    loss = float(per_example.sum()) / n
    dscores = exp
    dscores /= sum_exp
    dscores[rows, labels] -= 1 - smoothing
    if smoothing:
        dscores -= smoothing / classes
    if weights is not None:
        dscores *= weights[:, None]
    dscores *= 1.0 / n
    return loss, dscores


def mse_loss(predictions: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error over all N·T entries of predictions (N, T) and its gradient (N, T)."""
    diff = predictions - targets
    loss = float(np.einsum("ij,ij->", diff, diff)) / diff.size
    diff *= 2.0 / diff.size
    return loss, diff
