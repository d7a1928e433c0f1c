"""Fold input standardization, batch norm and target de-standardization into affine layers.

Pure functions of float64 arrays, with no validation: `export.network` checks a run's
parameters and explains what is wrong before any of these run. Weights are stored (in, out), so a
layer computes z = a @ W + b, and scaling an output unit scales a COLUMN of W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIDDEN_ACTIVATIONS = ("relu", "tanh", "sigmoid")


@dataclass(frozen=True)
class AffineLayer:
    """z = a @ weight + bias, weight (in, out) float64, bias (out,) float64."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class FoldedNetwork:
    """An MLP of plain affine layers: `activation` after every layer but the last.

    The last layer gives logits (classification: softmax follows) or y in target units
    (regression: nothing follows). Inputs are raw, unstandardized features.
    """

    layers: tuple[AffineLayer, ...]
    activation: str
    task: str


def fold_batchnorm(
    weight: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    epsilon: float,
    bias: np.ndarray | None = None,
) -> AffineLayer:
    """Fold inference-mode batch norm into the affine layer before it.

    BN(a @ W + b) = s·(a @ W + b − μ) + β with s = γ/√(σ²+ε) per output unit, so
    W' = W·s (columns), b' = β + s·(b − μ). weight: (in, out); the rest: (out,).
    """
    fold_scale = gamma / np.sqrt(running_var + epsilon)
    pre_bias = np.zeros_like(running_mean) if bias is None else bias
    return AffineLayer(
        weight=weight * fold_scale[np.newaxis, :],
        bias=beta + fold_scale * (pre_bias - running_mean),
    )


def fold_input_standardization(
    layer: AffineLayer, input_mean: np.ndarray, input_std: np.ndarray
) -> AffineLayer:
    """Make the first layer take raw x instead of (x − mean)/std.

    ((x − m)/s) @ W + b = x @ (W / s[:, None]) + (b − (m/s) @ W). input_mean, input_std: (F,).
    """
    scaled_weight = layer.weight / input_std[:, np.newaxis]
    return AffineLayer(weight=scaled_weight, bias=layer.bias - input_mean @ scaled_weight)


def fold_target_destandardization(
    layer: AffineLayer, target_mean: np.ndarray, target_std: np.ndarray
) -> AffineLayer:
    """Make the output layer give y in target units: (a @ W + b)·std + mean. Shapes: (T,)."""
    return AffineLayer(
        weight=layer.weight * target_std[np.newaxis, :],
        bias=layer.bias * target_std + target_mean,
    )


def fold_params(
    params: dict[str, np.ndarray],
    *,
    hidden_count: int,
    batchnorm: bool,
    epsilon: float,
    activation: str,
    task: str,
) -> FoldedNetwork:
    """Fold a run's parameters (the params.npz layout of docs/contracts.md) into affine layers.

    The parameters must already be validated (`export.network.check_params`); everything is
    computed in float64.
    """
    p = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}
    layers: list[AffineLayer] = []
    for index in range(1, hidden_count + 1):
        prefix = f"hidden{index}"
        if batchnorm:
            layer = fold_batchnorm(
                p[f"{prefix}.W"],
                p[f"{prefix}.gamma"],
                p[f"{prefix}.beta"],
                p[f"{prefix}.running_mean"],
                p[f"{prefix}.running_var"],
                epsilon,
                bias=p.get(f"{prefix}.b"),
            )
        else:
            layer = AffineLayer(weight=p[f"{prefix}.W"], bias=p[f"{prefix}.b"])
        layers.append(layer)
    layers.append(AffineLayer(weight=p["output.W"], bias=p["output.b"]))
    layers[0] = fold_input_standardization(layers[0], p["input.mean"], p["input.std"])
    if task == "regression":
        layers[-1] = fold_target_destandardization(layers[-1], p["target.mean"], p["target.std"])
    return FoldedNetwork(layers=tuple(layers), activation=activation, task=task)


def _activate(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "sigmoid":
        # tanh form: no overflow warning for large |z|
        return 0.5 * (1.0 + np.tanh(0.5 * z))
    raise ValueError(f"unknown activation {activation!r}; expected one of {HIDDEN_ACTIVATIONS}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def forward_folded(network: FoldedNetwork, x_raw: np.ndarray) -> np.ndarray:
    """Score raw features x_raw (N, F) with the folded network, in float64.

    Returns probabilities (N, C) for classification or y (N, T) for regression: the same
    quantity `training.inference.predict` returns, so the two can be compared.
    """
    a = x_raw
    for layer in network.layers[:-1]:
        a = _activate(a @ layer.weight + layer.bias, network.activation)
    out = a @ network.layers[-1].weight + network.layers[-1].bias
    return _softmax(out) if network.task == "classification" else out
