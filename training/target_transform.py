"""A regression target's transform: trained on t(y), answered in y's units (--target-transform).

    none   t(y) = y
    log    t(y) = log(1 + y), inverse y = exp(t) − 1; needs every training target > −1

The network learns the standardized t(y) (target.mean/std in params.npz are t's); inference
(inference.predict, the dev and test metrics) and the exported graph (Exp, then Sub 1, after the
last Gemm) apply the inverse, so every answer is in the target's units. meta.json names the
transform under "target_transform" (regression only; absent in older runs: none).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def transform_of(meta: dict[str, Any]) -> str:
    """The run's target transform from meta.json ("none" when absent: an older run)."""
    return str(meta.get("target_transform") or "none")


def forward(y: np.ndarray, transform: str, where: str = "the training targets") -> np.ndarray:
    """t(y) for targets y (N, T); ValueError naming `where` when a target is out of t's domain."""
    if transform == "none":
        return y
    if transform == "log":
        low = float(np.min(y)) if y.size else 0.0
        if not low > -1:
            raise ValueError(
                f"target_transform 'log' trains on log(1 + y): {where} reach {low:g} (need > −1)"
            )
        result: np.ndarray = np.log1p(y)
        return result
    raise ValueError(f"unknown target transform {transform!r}")


def inverse(t: np.ndarray, transform: str) -> np.ndarray:
    """y from t(y) (N, T), in t's dtype."""
    if transform == "none":
        return t
    if transform == "log":
        result: np.ndarray = np.expm1(t)
        return result
    raise ValueError(f"unknown target transform {transform!r}")
