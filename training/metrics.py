"""Dev and test metrics, and the dev objective (lower is better) that model selection minimizes.

    metric              task             value                           objective
    error               classification   share of wrong labels           the value
    balanced_accuracy   classification   mean over classes of recall     1 − value
    log_loss            classification   mean −log p(true class)         the value
    rmse                regression       √ mean (y − ŷ)², target units   the value
    r2                  regression       1 − SS_res / SS_tot             1 − value

history.json's "dev_error" and meta.json's "dev_error" hold the objective of the chosen metric
(the error rate or RMSE by default), so early stopping and the tuner minimize it unchanged.
"""

from __future__ import annotations

import numpy as np

METRICS = {
    "classification": ("error", "balanced_accuracy", "log_loss"),
    "regression": ("rmse", "r2"),
}
HIGHER_IS_BETTER = ("balanced_accuracy", "r2")
LOSS = {"classification": "log_loss", "regression": "mse"}  # tie-breaks between equal objectives
_PROBABILITY_FLOOR = 1e-15  # log loss of a probability of 0 is capped at −log(1e-15) ≈ 34.5


def default_metric(task: str) -> str:
    """The metric a run selects on when none is given: error rate or RMSE."""
    return METRICS[task][0]


def evaluate(outputs: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """Every metric of the task, plus its loss ("log_loss" or "mse"), NaN when outputs diverged.

    outputs: probabilities (N, C) or predictions (N, T) in target units; y: labels (N,) or (N, T).
    """
    names = (*METRICS[task], LOSS[task])
    if len(y) == 0 or not np.all(np.isfinite(outputs)):
        return dict.fromkeys(names, float("nan"))
    if task == "classification":
        predicted = outputs.argmax(axis=1)
        recalls = [np.mean(predicted[y == label] == label) for label in np.unique(y)]
        true_probability = np.clip(outputs[np.arange(len(y)), y], _PROBABILITY_FLOOR, 1.0)
        log_loss = float(-np.mean(np.log(true_probability)))
        return {
            "error": float(np.mean(predicted != y)),
            "balanced_accuracy": float(np.mean(recalls)),
            "log_loss": log_loss,
        }
    residual = ((outputs - y) ** 2).sum()
    total = ((y - y.mean(axis=0)) ** 2).sum()
    mse = float(np.mean((outputs - y) ** 2))
    return {
        "rmse": float(np.sqrt(mse)),
        "r2": float(1.0 - residual / total) if total > 0 else float("nan"),
        "mse": mse,
    }


def objective(metric: str, values: dict[str, float]) -> float:
    """The dev objective of `metric` (lower is better) from evaluate()'s values."""
    value = values[metric]
    return 1.0 - value if metric in HIGHER_IS_BETTER else value


def check_metric(metric: str, task: str) -> None:
    """ValueError when `metric` does not apply to `task`."""
    if metric not in METRICS[task]:
        raise ValueError(
            f"metric {metric!r} does not apply to {task}: use one of {', '.join(METRICS[task])}"
        )
