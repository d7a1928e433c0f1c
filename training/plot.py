"""learning_curve.png: cost and dev error per epoch, marking settings changes and the kept epoch."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bnserve.atomic import write_bytes

# what history's dev_error holds for each metric (its objective, lower is better)
OBJECTIVE_LABELS = {
    "error": "dev error rate",
    "balanced_accuracy": "dev 1 − balanced accuracy",
    "log_loss": "dev log loss",
    "rmse": "dev RMSE",
    "r2": "dev 1 − R²",
}


def write_learning_curve(
    path: Path, history: list[dict[str, Any]], task: str, metric: str | None = None
) -> None:
    """Plot history records ({"epoch", "cost", "dev_error", "settings"}) to a PNG, atomically."""
    epochs = [record["epoch"] for record in history]
    figure, (cost_axis, error_axis) = plt.subplots(1, 2, figsize=(10, 4))
    cost_axis.plot(epochs, [record["cost"] for record in history], marker=".")
    cost_axis.set(xlabel="epoch", ylabel="training cost", yscale="log", title="cost")
    dev_errors = [math.nan if r["dev_error"] is None else r["dev_error"] for r in history]
    error_axis.plot(epochs, dev_errors, marker=".", color="C1")
    default = "error" if task == "classification" else "rmse"
    label = OBJECTIVE_LABELS[metric or default]
    error_axis.set(xlabel="epoch", ylabel=label, title=label)
    kept = [record for record in history if record.get("kept")]
    if kept and kept[0]["epoch"] != epochs[-1]:  # the best epoch, kept by early stopping
        error_axis.axvline(kept[0]["epoch"], color="C2", linewidth=1)
        error_axis.plot(
            [kept[0]["epoch"]], [kept[0]["dev_error"]], marker="*", markersize=12, color="C2",
            linestyle="none", label=f"kept: epoch {kept[0]['epoch']}",
        )  # fmt: skip
        error_axis.legend()
    for previous, record in itertools.pairwise(history):
        if record["settings"] != previous["settings"]:
            for axis in (cost_axis, error_axis):
                axis.axvline(record["epoch"] - 0.5, color="grey", linestyle="--", linewidth=1)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
