"""The training distribution a model carries for drift monitoring (metadata `bnserve.drift`).

Per input feature: the training split's mean and std (the standardization the fold baked in),
its min and max, its decile edges and the share of training rows in each decile bin. Per hidden
layer with batch norm: the frozen running mean and variance of z, γ and β, and the name of the
graph tensor that holds the pre-activation γ·ẑ + β (what the server reads back to get ẑ).

Bins are right-closed: bin k holds the values v with edges[k-1] < v ≤ edges[k] (bin 0 everything
≤ edges[0], the last bin everything above the last edge). Edges are unique, so a discrete
feature with many equal deciles gets fewer, wider bins; the stored shares say how full each was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.export.columns import design_offsets
from bnserve.server.modelfile.contract import DRIFT_FORMAT
from bnserve.training.data.folds import fold_split
from bnserve.training.data.loading import fit_standardization, load_split
from bnserve.training.data.schema import MISSING, TableSchema
from bnserve.training.errors import DataError
from bnserve.training.model import layer_names
from bnserve.training.rundir import Run
from bnserve.training.scaling import robust_statistics

DECILES = np.linspace(0.1, 0.9, 9)


@dataclass(frozen=True)
class TrainingRows:
    """Raw feature rows (N, F) float64 the distribution was measured on, and what they are."""

    x: np.ndarray
    source: str  # "training split" or "held-out split" (when the training data is gone)
    note: str  # why the held-out split was used; empty for the training split


def training_rows(run: Run) -> TrainingRows:
    """The run's training split, reloaded from its data source and checked against the
    standardization in params.npz; the held-out split (with a note why) when that fails."""
    config = run.config
    try:
        dataset, split = load_split(config)
        if config.folds is not None:  # a cross-validation fold's run: its own training rows
            split = fold_split(
                split,
                dataset.y,
                dataset.task,
                config.folds,
                config.fold,
                config.data_split_seed,
                dataset.source,
                config.fold_repeat,
            )
    except DataError as error:
        return _heldout(run, f"training data not readable ({error})")
    x_train = dataset.x[split.train]
    if "input.clip" in run.params:  # robust scaling: its median and quantile scale
        mean, std = robust_statistics(x_train)
    else:
        mean, std = fit_standardization(x_train)
    same_shape = mean.shape == run.params["input.mean"].shape
    if not same_shape or not (
        np.allclose(mean, run.params["input.mean"], rtol=1e-6, atol=1e-6)
        and np.allclose(std, run.params["input.std"], rtol=1e-6, atol=1e-6)
    ):
        return _heldout(run, f"{config.data} no longer gives the split the run was standardized on")
    return TrainingRows(x_train, "training split", "")


def _heldout(run: Run, why: str) -> TrainingRows:
    return TrainingRows(np.asarray(run.heldout_x, dtype=np.float64), "held-out split", why)


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value of x (N,) for sorted unique edges (K,): 0..K, right-closed."""
    return np.searchsorted(edges, x, side="left")


def _rounded(values: np.ndarray) -> list[float]:
    """Values rounded to float32, each written as the shortest decimal that reads back as the
    same float32 (readers cast to float32 and compare exactly what the model sees)."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).ravel()]


def feature_distribution(x_train: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Per-feature statistics of x_train (N, F) raw; mean and std (F,) are the run's own."""
    edges_per_feature, shares_per_feature = [], []
    x32 = x_train.astype(np.float32)
    for column in x32.T:
        edges = np.unique(np.asarray(_rounded(np.quantile(column, DECILES)), dtype=np.float32))
        counts = np.bincount(bin_index(column, edges), minlength=edges.size + 1)
        edges_per_feature.append(_rounded(edges))
        shares_per_feature.append([round(float(c) / column.size, 6) for c in counts])
    return {
        "mean": _rounded(mean),
        "std": _rounded(std),
        "min": _rounded(x32.min(axis=0)),
        "max": _rounded(x32.max(axis=0)),
        "edges": edges_per_feature,
        "shares": shares_per_feature,
    }


def layer_statistics(
    params: dict[str, np.ndarray], hidden_count: int, preactivation_name: str
) -> list[dict[str, Any]]:
    """Each batch-normed hidden layer's frozen statistics; `preactivation_name` is a format
    string with {i} (1-based layer) naming the graph tensor γ·ẑ + β."""
    layers = []
    for index, prefix in enumerate(layer_names(hidden_count)[:-1], start=1):
        if f"{prefix}.gamma" not in params:
            return []  # no batch norm: no frozen statistics to compare with
        layers.append(
            {
                "name": prefix,
                "output": preactivation_name.format(i=index),
                "running_mean": _rounded(params[f"{prefix}.running_mean"]),
                "running_var": _rounded(params[f"{prefix}.running_var"]),
                "gamma": _rounded(params[f"{prefix}.gamma"]),
                "beta": _rounded(params[f"{prefix}.beta"]),
            }
        )
    return layers


def drift_metadata(
    rows: TrainingRows,
    params: dict[str, np.ndarray],
    hidden_count: int,
    preactivation_name: str,
) -> dict[str, Any]:
    """The `bnserve.drift` object (docs/contracts.md). Its features' mean and std are the
    standardization the fold baked in; with robust scaling (input.clip: its median and scale
    are no mean and std) the rows' own, which is what the drift monitor compares with."""
    mean, std = params["input.mean"], params["input.std"]
    if "input.clip" in params:
        mean, std = fit_standardization(rows.x)
    return {
        "format": DRIFT_FORMAT,
        "source": rows.source,
        "rows": int(rows.x.shape[0]),
        "features": feature_distribution(rows.x, mean, std),
        "layers": layer_statistics(params, hidden_count, preactivation_name),
    }


@dataclass(frozen=True)
class ColumnSummary:
    """What the drift reference of a format-2 model needs from its training rows, gathered
    chunk by chunk from their design inputs (never all D one-hot columns at once)."""

    numeric: np.ndarray  # (n, Fn) float64: each numeric column's values, NaN where missing
    slot_counts: dict[str, np.ndarray]  # categorical column → (S,) rows per slot
    rows: int


def summarize_design(chunks: Iterable[np.ndarray], schema: TableSchema) -> ColumnSummary:
    """Summarize design rows (chunks of (n_i, D), encoding.py's layout, unstandardized): a
    numeric value is missing where its indicator is 1 (a column without one had no gaps)."""
    placed = design_offsets(schema)
    numeric_parts: list[np.ndarray] = []
    counts = {
        column.name: np.zeros(len(column.inputs))
        for column, _ in placed
        if column.kind == "categorical"
    }
    rows = 0
    for chunk in chunks:
        rows += chunk.shape[0]
        values = []
        for column, offset in placed:
            if column.kind == "numeric":
                value = chunk[:, offset].copy()
                if column.indicator:
                    value[chunk[:, offset + 1] > 0.5] = np.nan
                values.append(value)
            else:
                counts[column.name] += chunk[:, offset : offset + len(column.inputs)].sum(axis=0)
        width = sum(1 for column, _ in placed if column.kind == "numeric")
        numeric_parts.append(np.stack(values, axis=1) if values else np.zeros((len(chunk), width)))
    numeric = np.concatenate(numeric_parts) if numeric_parts else np.zeros((0, 0))
    return ColumnSummary(numeric, counts, rows)


def schema_drift_metadata(
    summary: ColumnSummary,
    source: str,
    schema: TableSchema,
    params: dict[str, np.ndarray],
    hidden_count: int,
    preactivation_name: str,
) -> dict[str, Any]:
    """The `bnserve.drift` object of a format-2 model (docs/contracts.md).

    "features" describes the numeric columns only, each on its present values (missing
    excluded; mean and std of those values), named by "feature_names"; "columns" gives every
    used column's missing rate and, for a categorical column, the share of rows per slot (kept
    levels, `<other>`, `<missing>`: they sum to 1)."""
    names: list[str] = []
    per_feature: list[dict[str, Any]] = []
    columns: dict[str, dict[str, Any]] = {}
    rows = max(1, summary.rows)
    position = 0
    for column, _ in design_offsets(schema):
        if column.kind == "numeric":
            values = summary.numeric[:, position]
            position += 1
            missing = np.isnan(values)
            present = values[~missing]
            if not present.size:  # every row missing: describe the fill
                present = np.array([column.fill or 0.0])
            std = float(present.std()) or 1.0
            per_feature.append(
                feature_distribution(
                    present[:, np.newaxis], np.array([present.mean()]), np.array([std])
                )
            )
            names.append(column.name)
            columns[column.name] = {
                "kind": "numeric",
                "missing_rate": round(float(missing.sum()) / rows, 6),
            }
            continue
        shares = summary.slot_counts[column.name] / rows
        levels = {
            slot[len(column.name) + 1 :]: round(float(share), 6)
            for slot, share in zip(column.inputs, shares.tolist(), strict=True)
        }
        columns[column.name] = {
            "kind": "categorical",
            "missing_rate": levels.get(MISSING, 0.0),
            "levels": levels,
        }
    keys = ("mean", "std", "min", "max", "edges", "shares")
    features = {key: [value for part in per_feature for value in part[key]] for key in keys}
    return {
        "format": DRIFT_FORMAT,
        "source": source,
        "rows": summary.rows,
        "features": features,
        "feature_names": names,
        "columns": columns,
        "layers": layer_statistics(params, hidden_count, preactivation_name),
    }
