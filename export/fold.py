"""Fold input standardization, batch norm and target de-standardization into affine layers.

Pure functions of float64 arrays, with no validation: `export/network.py` checks a run's
parameters (`export/onnx_chain.py` an imported graph's) and explains what is wrong before any of
these run. Weights are stored (in, out), so a
layer computes z = a @ W + b, and scaling an output unit scales a COLUMN of W.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bnserve.export.network import NetworkSpec
from bnserve.training.config import ACTIVATIONS
from bnserve.training.model import layer_names

# what a folded graph may apply: what bnserve trains, and LeakyRelu from other frameworks
FOLDED_ACTIVATIONS = (*ACTIVATIONS, "leaky_relu")
LEAKY_RELU_ALPHA = 0.01  # ONNX's LeakyRelu default and PyTorch's default negative_slope


@dataclass(frozen=True)
class AffineLayer:
    """z = a @ weight + bias, weight (in, out) float64, bias (out,) float64."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class InputClip:
    """Robust scaling the graph applies before its first layer (training/scaling.py):
    u = (x − centre)/scale, then u/√(1 + (u/3)²) on the inputs where clip is set. (F,) each."""

    centre: np.ndarray  # float64
    scale: np.ndarray  # float64, > 0
    clip: np.ndarray  # bool


@dataclass(frozen=True)
class FoldedNetwork:
    """An MLP of plain affine layers: `activation` after every layer but the last.

    The last layer gives logits (classification: softmax follows) or y in target units
    (regression: nothing follows), or with target_transform "log" t = log(1 + y), which the
    graph turns into y = exp(t) − 1 (training/target_transform.py). Inputs are raw,
    unstandardized features; with input_clip (robust scaling) the first layer reads them scaled
    and clipped (the clip is not affine, so only what follows it folds).
    """

    layers: tuple[AffineLayer, ...]
    activation: str  # one of FOLDED_ACTIVATIONS
    task: str
    leaky_relu_alpha: float = LEAKY_RELU_ALPHA  # leaky_relu only: the slope where z < 0
    target_transform: str = "none"  # regression: "none" or "log"
    input_clip: InputClip | None = None


@dataclass(frozen=True)
class BatchNormStats:
    """One layer's inference-mode batch norm: (out,) float64 arrays and its ε."""

    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    epsilon: float


@dataclass(frozen=True)
class LinearLayer:
    """A layer as trained: z = a @ weight (+ bias), then batch norm when `batchnorm` is set.

    weight (in, out) float64; bias (out,) or None (batch norm's β replaces it).
    """

    weight: np.ndarray
    bias: np.ndarray | None
    batchnorm: BatchNormStats | None = None
    # then z·scale + shift, (out,) each: an exporter's own folded batch norm (Keras through
    # tf2onnx writes Mul/Add) or an output's de-standardization; None: nothing
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None


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


def fold_output_affine(layer: AffineLayer, scale: np.ndarray, shift: np.ndarray) -> AffineLayer:
    """Fold an elementwise z·scale + shift after the layer into it: W' = W·scale (columns),
    b' = b·scale + shift. scale, shift: (out,)."""
    return AffineLayer(weight=layer.weight * scale[np.newaxis, :], bias=layer.bias * scale + shift)


def fold_target_destandardization(
    layer: AffineLayer, target_mean: np.ndarray, target_std: np.ndarray
) -> AffineLayer:
    """Make the output layer give y in target units: (a @ W + b)·std + mean. Shapes: (T,)."""
    return fold_output_affine(layer, target_std, target_mean)


def fold_layers(
    layers: Sequence[LinearLayer],
    *,
    input_mean: np.ndarray,
    input_std: np.ndarray,
    activation: str,
    task: str,
    target_mean: np.ndarray | None = None,
    target_std: np.ndarray | None = None,
    leaky_relu_alpha: float = LEAKY_RELU_ALPHA,
) -> FoldedNetwork:
    """Fold a chain of layers (the last one the output layer) into affine layers taking raw x.

    Each layer's batch norm and scaling, if any, fold into it; (x − input_mean)/input_std (F,)
    into the first; y·target_std + target_mean (T,) into the last when given. Values must be
    validated by the caller (`network.check_params` for runs, `onnx_chain` for imports)."""
    folded: list[AffineLayer] = []
    for layer in layers:
        norm = layer.batchnorm
        if norm is None:
            bias = np.zeros(layer.weight.shape[1]) if layer.bias is None else layer.bias
            folded.append(AffineLayer(weight=layer.weight, bias=bias))
        else:
            folded.append(
                fold_batchnorm(
                    layer.weight,
                    norm.gamma,
                    norm.beta,
                    norm.running_mean,
                    norm.running_var,
                    norm.epsilon,
                    bias=layer.bias,
                )
            )
        if layer.scale is not None and layer.shift is not None:
            folded[-1] = fold_output_affine(folded[-1], layer.scale, layer.shift)
    folded[0] = fold_input_standardization(folded[0], input_mean, input_std)
    if target_mean is not None and target_std is not None:
        folded[-1] = fold_target_destandardization(folded[-1], target_mean, target_std)
    return FoldedNetwork(
        layers=tuple(folded), activation=activation, task=task, leaky_relu_alpha=leaky_relu_alpha
    )


def fold_params(params: Mapping[str, np.ndarray], spec: NetworkSpec) -> FoldedNetwork:
    """Fold a run's parameters (the params.npz layout of docs/contracts.md) into affine layers.

    The parameters must already be validated against spec (`bnserve.export.network.check_params`);
    everything is computed in float64.
    """
    p = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}
    layers: list[LinearLayer] = []
    for prefix in layer_names(len(spec.hidden_sizes))[:-1]:
        norm = None
        if spec.batchnorm:
            norm = BatchNormStats(
                gamma=p[f"{prefix}.gamma"],
                beta=p[f"{prefix}.beta"],
                running_mean=p[f"{prefix}.running_mean"],
                running_var=p[f"{prefix}.running_var"],
                epsilon=spec.epsilon,
            )
        layers.append(
            LinearLayer(weight=p[f"{prefix}.W"], bias=p.get(f"{prefix}.b"), batchnorm=norm)
        )
    layers.append(LinearLayer(weight=p["output.W"], bias=p["output.b"]))
    regression = spec.task == "regression"
    input_clip = None
    input_mean, input_std = p["input.mean"], p["input.std"]
    if "input.clip" in p:  # robust: the graph scales and clips, the first layer reads that
        input_clip = InputClip(input_mean, input_std, p["input.clip"] > 0.5)
        input_mean, input_std = np.zeros_like(input_mean), np.ones_like(input_std)
    folded = fold_layers(
        layers,
        input_mean=input_mean,
        input_std=input_std,
        activation=spec.activation,
        task=spec.task,
        target_mean=p["target.mean"] if regression else None,
        target_std=p["target.std"] if regression else None,
    )
    return dataclasses.replace(
        folded, target_transform=spec.target_transform, input_clip=input_clip
    )
