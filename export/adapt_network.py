"""Un-fold a folded bnserve model back into the params.npz layout, and re-estimate its
batch-norm statistics on recent rows (AdaBN, Li et al. 2016), blended with the source's
(Schneider et al. 2020).

Pure functions of float64 arrays. The formulas are in docs/adapt.md; in brief, per hidden unit,
with s = γ/√(σ²+ε) the fold scale and (W', b') the folded layer (W stored (in, out)):

    un-fold    W = W'/s (columns); layer 1 also W = W'·std (rows)/s, since it took raw x
    blend      μ = (N0·μ_source + n·μ_recent)/(N0 + n), σ² likewise (N0 = --prior-rows)
    re-fold    bnserve.export.fold.fold_params on the new statistics

The un-folded bias (b' − β)/s + μ is not kept: it is implied by the card's μ and input
standardization, and `refold_error` measures how well the two agree (the round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bnserve.export.fold import BatchNormStats, FoldedNetwork, fold_params
from bnserve.export.network import NetworkSpec
from bnserve.training import layers
from bnserve.training.layers import BatchNormSettings, RunningStats
from bnserve.training.model import layer_names


@dataclass(frozen=True)
class FoldedSource:
    """What a folded model file holds: its affine layers and its card's frozen statistics.

    network: the folded graph's layers (raw x in); batchnorm: one BatchNormStats per hidden layer
    (from the card); input_mean, input_std: (F,) the standardization folded into layer 1.
    """

    network: FoldedNetwork
    batchnorm: tuple[BatchNormStats, ...]
    input_mean: np.ndarray
    input_std: np.ndarray


TINY = float(np.finfo(np.float32).tiny)


def fold_scale(norm: BatchNormStats) -> np.ndarray:
    """s = γ/√(σ²+ε), (H,); a unit with γ = 0 gets 1 (its folded column is 0 either way)."""
    scale = norm.gamma / np.sqrt(norm.running_var + norm.epsilon)
    return np.where(scale == 0, 1.0, scale)


def unfold(source: FoldedSource) -> dict[str, np.ndarray]:
    """The network in the params.npz layout (docs/contracts.md), float64.

    Regression: the folded output layer already gives y in target units, so target.mean is 0
    and target.std 1 (the identity) and output.W, output.b are the folded ones.
    """
    hidden = source.network.layers[:-1]
    output = source.network.layers[-1]
    params = {"input.mean": source.input_mean, "input.std": source.input_std}
    for index, (prefix, layer, norm) in enumerate(
        zip(layer_names(len(hidden))[:-1], hidden, source.batchnorm, strict=True)
    ):
        weight = layer.weight / fold_scale(norm)[np.newaxis, :]
        if index == 0:
            weight = weight * source.input_std[:, np.newaxis]
        params[f"{prefix}.W"] = weight
        params[f"{prefix}.gamma"] = norm.gamma
        params[f"{prefix}.beta"] = norm.beta
        params[f"{prefix}.running_mean"] = norm.running_mean
        params[f"{prefix}.running_var"] = norm.running_var
    params["output.W"], params["output.b"] = output.weight, output.bias
    if source.network.task == "regression":
        params["target.mean"] = np.zeros(output.bias.size)
        params["target.std"] = np.ones(output.bias.size)
    return params


def network_spec(source: FoldedSource) -> NetworkSpec:
    """The NetworkSpec of the un-folded network (for fold_params and the exporter's checks)."""
    network = source.network
    return NetworkSpec(
        feature_count=source.input_mean.size,
        hidden_sizes=tuple(layer.bias.size for layer in network.layers[:-1]),
        output_count=network.layers[-1].bias.size,
        activation=network.activation,
        batchnorm=True,
        epsilon=source.batchnorm[0].epsilon,
        task=network.task,
    )


def refold_error(source: FoldedSource, params: dict[str, np.ndarray]) -> float:
    """Largest |re-folded − source| over every folded weight and bias, relative to the largest
    magnitude of that layer's values: 0 up to float rounding when the card belongs to the graph."""
    refolded = fold_params(params, network_spec(source))
    worst = 0.0
    for old, new in zip(source.network.layers, refolded.layers, strict=True):
        for before, after in ((old.weight, new.weight), (old.bias, new.bias)):
            scale = max(float(np.max(np.abs(before), initial=0.0)), TINY)
            worst = max(worst, float(np.max(np.abs(after - before), initial=0.0)) / scale)
    return worst


@dataclass(frozen=True)
class AdaptPlan:
    """What to re-estimate and how much to trust the source."""

    layers: tuple[int, ...]  # hidden layers (1-based) whose μ, σ² are re-estimated
    prior_rows: float  # N0: the source statistics count as this many rows (0: recent alone)
    input_standardization: bool  # also re-estimate the per-feature mean and std of the input
    unbiased: bool  # σ² with n/(n − 1), as training's running variance was (meta running_var)


def blend(source: np.ndarray, recent: np.ndarray, prior_rows: float, rows: int) -> np.ndarray:
    """(N0·source + n·recent)/(N0 + n), elementwise."""
    blended: np.ndarray = (prior_rows * source + rows * recent) / (prior_rows + rows)
    return blended


def _variance(values: np.ndarray, unbiased: bool) -> np.ndarray:
    """Per-column variance of values (N, D); n/(n − 1) times the biased one when unbiased."""
    rows = values.shape[0]
    variance: np.ndarray = values.var(axis=0)
    return variance * (rows / (rows - 1)) if unbiased and rows > 1 else variance


def adapt_params(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    plan: AdaptPlan,
    *,
    activation: str,
    epsilon: float,
) -> dict[str, np.ndarray]:
    """New parameters with the planned statistics re-estimated on x (N, F) raw float64.

    Layer by layer in order: layer l's z = a_{l−1} @ W is measured with the layers before it
    already adapted. Input standardization, when planned, blends the per-feature mean and
    variance; a feature constant in the recent rows keeps its source std (dividing by 0 is
    no estimate).
    """
    adapted = {name: value.copy() for name, value in params.items()}
    rows = x.shape[0]
    if plan.input_standardization:
        std = adapted["input.std"]
        recent_var = x.var(axis=0)
        varies = np.ptp(x, axis=0) > 0
        adapted["input.mean"] = blend(adapted["input.mean"], x.mean(axis=0), plan.prior_rows, rows)
        blended_var = blend(std**2, recent_var, plan.prior_rows, rows)
        adapted["input.std"] = np.where(varies, np.sqrt(blended_var), std)
    settings = BatchNormSettings(epsilon=epsilon, unbiased=plan.unbiased)
    activation_forward = layers.ACTIVATION_FUNCTIONS[activation][0]
    a = (x - adapted["input.mean"]) / adapted["input.std"]
    n_hidden = len([name for name in adapted if name.endswith(".gamma")])
    for index, prefix in enumerate(layer_names(n_hidden)[:-1], start=1):
        z, _ = layers.affine_forward(a, adapted[f"{prefix}.W"])
        if index in plan.layers:
            mean_key, var_key = f"{prefix}.running_mean", f"{prefix}.running_var"
            adapted[mean_key] = blend(adapted[mean_key], z.mean(axis=0), plan.prior_rows, rows)
            recent_var = _variance(z, plan.unbiased)
            adapted[var_key] = blend(adapted[var_key], recent_var, plan.prior_rows, rows)
        state = RunningStats(adapted[f"{prefix}.running_mean"], adapted[f"{prefix}.running_var"])
        normed, _, _ = layers.batchnorm_forward(
            z, adapted[f"{prefix}.gamma"], adapted[f"{prefix}.beta"], state, settings, train=False
        )
        a, _ = activation_forward(normed)
    return adapted


def hidden_layers(choice: str, n_hidden: int) -> tuple[int, ...]:
    """--layers: "first" → (1,), "all" → (1, …, L), "K" → (1, …, K); ValueError otherwise."""
    if choice == "first":
        return (1,)
    if choice == "all":
        return tuple(range(1, n_hidden + 1))
    if not choice.isdigit() or not 1 <= int(choice) <= n_hidden:
        raise ValueError(
            f"--layers {choice!r}: expected first, all or a count from 1 to {n_hidden} "
            f"(the model has {n_hidden} hidden layer(s))"
        )
    return tuple(range(1, int(choice) + 1))


def layer_range(selected: Sequence[int]) -> str:
    """How a selection reads in the card and the report: "hidden1" or "hidden1-hidden3"."""
    if not selected:
        return "none"
    if len(selected) == 1:
        return f"hidden{selected[0]}"
    return f"hidden{selected[0]}-hidden{selected[-1]}"


def restandardize(
    params: dict[str, np.ndarray], mean: np.ndarray, std: np.ndarray
) -> dict[str, np.ndarray]:
    """The same network taking its input standardized by (mean, std) (F,) instead: exact.

    With (m, σ) the old standardization and W layer 1's weight, z = ((x − m)/σ) @ W equals
    ((x − mean)/std) @ W̃ + d with W̃ = W·(std/σ) (rows) and d = ((mean − m)/σ) @ W, and batch
    norm absorbs the constant d into its running mean: μ̃ = μ − d. Adapted models store the
    recent rows' own standardization this way, so their drift reference describes those rows
    while the card still un-folds the graph exactly.
    """
    old_mean, old_std = params["input.mean"], params["input.std"]
    weight = params["hidden1.W"]
    moved = dict(params)
    moved["input.mean"], moved["input.std"] = mean, std
    moved["hidden1.W"] = weight * (std / old_std)[:, np.newaxis]
    moved["hidden1.running_mean"] = (
        params["hidden1.running_mean"] - ((mean - old_mean) / old_std) @ weight
    )
    return moved


def recent_standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (F,) of x (N, F), as training standardizes; a constant column
    (every value equal) gets its value as mean and std 1. Its float mean may differ from the value
    by a rounding, which would leave a std of 1e-16 and divide by it."""
    constant = np.ptp(x, axis=0) == 0
    mean = np.where(constant, x[0], x.mean(axis=0))
    std = np.where(constant, 1.0, x.std(axis=0))
    return mean, std


def float32_exact(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every array rounded to float32 and kept as float64, as a training run's params.npz is: the
    card's float32 statistics then describe the graph exactly."""
    return {name: value.astype(np.float32).astype(np.float64) for name, value in params.items()}
