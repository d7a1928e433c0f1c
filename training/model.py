"""The MLP: chains the layer functions. Parameters live in a flat dict keyed as docs/contracts.md.

hidden{i}: z = a @ W, then batch norm (γ, β, running μ/σ²) or + b, then the activation, then
dropout (training only); output: scores = a @ W + b. The input is already standardized here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from bnserve.training import layers
from bnserve.training.layers import BatchNormSettings, RunningStats


@dataclass(frozen=True)
class NetSpec:
    """The shape of the computation (the arrays themselves live in the params dict)."""

    n_hidden: int  # number of hidden layers
    activation: str  # relu | tanh | sigmoid
    batchnorm: bool  # batch norm on every hidden layer (else a bias)
    bn: BatchNormSettings = field(default_factory=BatchNormSettings)
    dropout: float = 0.0  # drop probability after each hidden activation (training only)


# --- the params.npz layout (docs/contracts.md): every reader derives it from these ---------------

BATCHNORM_ARRAYS = ("gamma", "beta", "running_mean", "running_var")  # per unit, batch norm on
RUNNING_STATISTICS = ("running_mean", "running_var")  # frozen statistics, not learned


def layer_names(n_hidden: int) -> list[str]:
    """The layers' key prefixes, input side first: hidden1, …, hidden{n_hidden}, output."""
    return [f"hidden{i}" for i in range(1, n_hidden + 1)] + ["output"]


def hidden_count(params: Mapping[str, np.ndarray]) -> int:
    """How many hidden layers a params dict holds (its hidden{i}.W arrays)."""
    return sum(1 for name in params if name.startswith("hidden") and name.endswith(".W"))


def layer_shapes(layer_sizes: Sequence[int], *, batchnorm: bool) -> dict[str, tuple[int, ...]]:
    """The layers' keys and shapes for sizes [F, n_1, ..., n_L, C or T]: hidden{i}.W (in, out),
    then γ, β, running μ, σ² (out,) with batch norm or a bias b (out,); output.W and output.b."""
    shapes: dict[str, tuple[int, ...]] = {}
    names = layer_names(len(layer_sizes) - 2)
    for name, fan_in, fan_out in zip(names, layer_sizes[:-1], layer_sizes[1:], strict=True):
        shapes[f"{name}.W"] = (fan_in, fan_out)
        vectors = BATCHNORM_ARRAYS if batchnorm and name != "output" else ("b",)
        for vector in vectors:
            shapes[f"{name}.{vector}"] = (fan_out,)
    return shapes


def param_shapes(
    layer_sizes: Sequence[int], *, batchnorm: bool, task: str, input_clip: bool = False
) -> dict[str, tuple[int, ...]]:
    """Every params.npz key with its shape for sizes [F, n_1, ..., n_L, C or T]: the input
    standardization input.mean/std (F,) (and with robust scaling input.clip (F,):
    training/scaling.py), the layers (`layer_shapes`), and for regression the target
    standardization target.mean/std (T,)."""
    features, outputs = layer_sizes[0], layer_sizes[-1]
    shapes: dict[str, tuple[int, ...]] = {"input.mean": (features,), "input.std": (features,)}
    if input_clip:
        shapes["input.clip"] = (features,)
    shapes.update(layer_shapes(layer_sizes, batchnorm=batchnorm))
    if task == "regression":
        shapes["target.mean"] = shapes["target.std"] = (outputs,)
    return shapes


def init_params(
    layer_sizes: list[int],
    *,
    activation: str,
    batchnorm: bool,
    rng: np.random.Generator,
    dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    """Initial layer parameters for sizes [F, n_1, ..., n_L, C]: He (relu) or Xavier weights,
    γ = 1, β = 0, running μ = 0, σ² = 1, biases 0."""
    params: dict[str, np.ndarray] = {}
    hidden_gain = 2.0 if activation == "relu" else 1.0
    for key, shape in layer_shapes(layer_sizes, batchnorm=batchnorm).items():
        name, array = key.split(".")
        if array == "W":
            gain = 1.0 if name == "output" else hidden_gain
            params[key] = (rng.standard_normal(shape) * np.sqrt(gain / shape[0])).astype(dtype)
        else:
            params[key] = np.full(shape, 1.0 if array in ("gamma", "running_var") else 0.0, dtype)
    return params


def learnable_names(params: Mapping[str, np.ndarray]) -> list[str]:
    """Names the optimizer updates: W, b, γ, β (not running statistics or standardization)."""
    layers = set(layer_names(hidden_count(params)))
    return [
        name
        for name in params
        if name.split(".")[0] in layers and name.split(".")[1] not in RUNNING_STATISTICS
    ]


class HiddenCache(NamedTuple):
    """What backward needs of one hidden layer's forward pass."""

    affine: layers.AffineCache
    norm: layers.BatchNormCache | None  # None without batch norm
    activation: np.ndarray  # the activation's output (N, D)
    dropout_mask: np.ndarray | None  # the scaled mask (N, D); None without dropout


class ForwardCache(NamedTuple):
    """Every layer's cache of one training forward pass, input side first."""

    hidden: list[HiddenCache]
    output: layers.AffineCache


def forward(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    spec: NetSpec,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, ForwardCache, dict[str, np.ndarray]]:
    """Scores (N, C or T) for standardized x (N, F).

    Returns (scores, cache, running): `running` holds the updated running statistics
    ("hidden{i}.running_mean/var") when training with batch norm, else it is empty.
    """
    activation_forward = layers.ACTIVATION_FUNCTIONS[spec.activation][0]
    caches: list[HiddenCache] = []
    running: dict[str, np.ndarray] = {}
    a = x
    for i in range(1, spec.n_hidden + 1):
        name = f"hidden{i}"
        if spec.batchnorm:
            z, affine_cache = layers.affine_forward(a, params[f"{name}.W"])
            state = RunningStats(params[f"{name}.running_mean"], params[f"{name}.running_var"])
            z, norm_cache, new_state = layers.batchnorm_forward(
                z, params[f"{name}.gamma"], params[f"{name}.beta"], state, spec.bn, train=train
            )
            if train:
                running[f"{name}.running_mean"], running[f"{name}.running_var"] = new_state
        else:
            z, affine_cache = layers.affine_forward(a, params[f"{name}.W"], params[f"{name}.b"])
            norm_cache = None
        a, activation_cache = activation_forward(z)
        dropout_mask = None
        if train and spec.dropout > 0:
            if rng is None:
                raise ValueError(f"dropout {spec.dropout} needs rng, a numpy Generator")
            a, dropout_mask = layers.dropout_forward(a, spec.dropout, rng)
        caches.append(HiddenCache(affine_cache, norm_cache, activation_cache, dropout_mask))
    scores, output_cache = layers.affine_forward(a, params["output.W"], params["output.b"])
    return scores, ForwardCache(caches, output_cache), running


def backward(dscores: np.ndarray, cache: ForwardCache, spec: NetSpec) -> dict[str, np.ndarray]:
    """Gradients of every learnable parameter from dscores (N, C or T) and the training cache."""
    activation_backward = layers.ACTIVATION_FUNCTIONS[spec.activation][1]
    grads: dict[str, np.ndarray] = {}
    da, grads["output.W"], grads["output.b"] = layers.affine_backward(dscores, cache.output)
    for i in range(spec.n_hidden, 0, -1):
        name = f"hidden{i}"
        affine_cache, norm_cache, activation_cache, dropout_mask = cache.hidden[i - 1]
        assert da is not None  # only the first layer's input gradient is skipped
        if dropout_mask is not None:
            da = layers.dropout_backward(da, dropout_mask)
        dz = activation_backward(da, activation_cache)
        if norm_cache is not None:  # batch norm
            dz, grads[f"{name}.gamma"], grads[f"{name}.beta"] = layers.batchnorm_backward(
                dz, norm_cache
            )
        da, grads[f"{name}.W"], db = layers.affine_backward(dz, affine_cache, input_grad=i > 1)
        if not spec.batchnorm:
            grads[f"{name}.b"] = db
    return grads


def loss_and_grads(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    spec: NetSpec,
    *,
    task: str,
    l2: float = 0.0,
    rng: np.random.Generator | None = None,
    class_weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Training step maths: (cost, grads, running statistics) for x (N, F) and y.

    y: (N,) int labels (classification) or (N, T) standardized targets (regression). The cost
    is the mean loss (each example's times class_weight[y_i] when given, (C,)) plus
    0.5·l2·ΣW² over weight matrices; label_smoothing ε (classification) trains against
    (1 − ε)·one-hot + ε/C (layers.softmax_cross_entropy).
    """
    scores, cache, running = forward(params, x, spec, train=True, rng=rng)
    if task == "classification":
        weights = None if class_weight is None else class_weight[y].astype(scores.dtype)
        cost, dscores = layers.softmax_cross_entropy(scores, y, weights, label_smoothing)
    else:
        cost, dscores = layers.mse_loss(scores, y)
    grads = backward(dscores, cache, spec)
    if l2 > 0:
        for name, grad in grads.items():
            if name.endswith(".W"):
                weights = params[name]
                cost += 0.5 * l2 * float(np.einsum("ij,ij->", weights, weights))
                grad += l2 * weights
    return cost, grads, running


def population_statistics(
    params: dict[str, np.ndarray], x: np.ndarray, spec: NetSpec
) -> dict[str, np.ndarray]:
    """Exact μ, σ² of every hidden layer's z over all of x (N, F), with the final weights.

    Layer by layer: each layer's z is computed with the earlier layers already normalized by
    their population statistics. The variance is unbiased (N/(N − 1)) when spec.bn.unbiased.
    """
    stats: dict[str, np.ndarray] = {}
    activation_forward = layers.ACTIVATION_FUNCTIONS[spec.activation][0]
    a = x
    n = x.shape[0]
    for i in range(1, spec.n_hidden + 1):
        name = f"hidden{i}"
        z, _ = layers.affine_forward(a, params[f"{name}.W"])
        var = z.var(axis=0)
        if spec.bn.unbiased and n > 1:
            var = var * (n / (n - 1))
        state = RunningStats(z.mean(axis=0), var)
        stats[f"{name}.running_mean"], stats[f"{name}.running_var"] = state
        z, _, _ = layers.batchnorm_forward(
            z, params[f"{name}.gamma"], params[f"{name}.beta"], state, spec.bn, train=False
        )
        a, _ = activation_forward(z)
    return stats
