"""Centred finite differences in float64, shared by the layer and model gradient checks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(scalar_fn: Callable[[], float], array: np.ndarray, h: float = 1e-6):
    """d scalar_fn / d array by centred differences, perturbing `array` in place (restored)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + h
        plus = scalar_fn()
        array[index] = original - h
        minus = scalar_fn()
        array[index] = original
        grad[index] = (plus - minus) / (2 * h)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a − n| / max(|a| + |n|, 1e-8): ~1e-7 or below when the backward pass is right."""
    scale = np.maximum(np.abs(analytic) + np.abs(numeric), 1e-8)
    return float(np.max(np.abs(analytic - numeric) / scale))
