"""Scoring a FoldedNetwork in numpy: the tests' second path beside the ONNX graph (export itself
verifies with onnxruntime against `bnserve.training.inference.predict`)."""

from __future__ import annotations

import numpy as np

from bnserve.export.fold import FOLDED_ACTIVATIONS, FoldedNetwork


def _activate(z: np.ndarray, activation: str, leaky_relu_alpha: float) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "leaky_relu":
        return np.where(z >= 0.0, z, leaky_relu_alpha * z)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "sigmoid":
        # tanh form: no overflow warning for large |z|
        return 0.5 * (1.0 + np.tanh(0.5 * z))
    raise ValueError(f"unknown activation {activation!r}; expected one of {FOLDED_ACTIVATIONS}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def forward_folded(network: FoldedNetwork, x_raw: np.ndarray) -> np.ndarray:
    """Score raw features x_raw (N, F) with the folded network, in float64.

    Returns probabilities (N, C) for classification or y (N, T) for regression: the same
    quantity `bnserve.training.inference.predict` returns, so the two can be compared.
    """
    a = x_raw
    for layer in network.layers[:-1]:
        a = _activate(a @ layer.weight + layer.bias, network.activation, network.leaky_relu_alpha)
    out = a @ network.layers[-1].weight + network.layers[-1].bias
    return _softmax(out) if network.task == "classification" else out
