"""Robust input scaling with smooth clipping (--input-scaling robust; RealMLP, Holzmüller et al.
2024): each numeric input u = (x − median) / scale, then clip(u) = u / √(1 + (u/3)²).

    scale = q75 − q25 (the interquartile range of the training rows); where that is 0,
            (max − min) / 2; where that is 0 too (a constant input), 1

clip is smooth, odd, increasing, about u near 0 and bounded by ±3, so a far outlier (1e6) enters
the network as ≈ 3, not as a value that swamps its first layer. The median and scale are stored as
params.npz's input.mean and input.std, and input.clip (D,) marks the inputs clip applies to (1) or
not (0: one-hot and missing-indicator inputs, which stay 0/1); its presence is what makes a run
robust. A missing cell is filled (with the training mean, as under standard scaling) before it is
scaled: the median and quantiles are those of the filled values, as standardization's mean and
std are.
"""

from __future__ import annotations

import numpy as np

CLIP_BOUND = 3.0  # clip(u) → ±CLIP_BOUND as u → ±∞; about u for |u| ≪ CLIP_BOUND
QUARTILES = (0.25, 0.75)


def smooth_clip(u: np.ndarray) -> np.ndarray:
    """u / √(1 + (u/3)²), elementwise in u's dtype (any shape); inf → ±3, NaN stays NaN."""
    q = u / CLIP_BOUND
    with np.errstate(over="ignore", invalid="ignore"):
        squared = q * q
        clipped = u / np.sqrt(1 + squared)
    # |u| past √(float max)·3 overflows q²: the limit is ±3 there (and for ±inf)
    result: np.ndarray = np.where(np.isinf(squared), np.sign(u) * CLIP_BOUND, clipped)
    return result.astype(u.dtype, copy=False)


def apply_clip(u: np.ndarray, clip: np.ndarray | None) -> np.ndarray:
    """u (N, D) with smooth_clip applied in place on the columns where clip (D,) is 1."""
    if clip is None:
        return u
    columns = np.flatnonzero(clip > 0.5)
    if columns.size == u.shape[1]:
        return smooth_clip(u)
    if columns.size:
        u[:, columns] = smooth_clip(u[:, columns])
    return u


def robust_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and scale (K,) float64 of values (n, K) (the module docstring's rule);
    n = 0 gives median 0 and scale 1."""
    if len(values) == 0:
        return np.zeros(values.shape[1]), np.ones(values.shape[1])
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values, axis=0)
    low, high = np.quantile(values, QUARTILES, axis=0)
    scale = high - low
    half_range = (values.max(axis=0) - values.min(axis=0)) / 2
    scale = np.where(scale > 0, scale, half_range)
    return median, np.where(scale > 0, scale, 1.0)
