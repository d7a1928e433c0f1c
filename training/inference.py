"""The numpy inference path: frozen statistics only, so no row's output depends on another row."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnserve.training import layers, model, target_transform
from bnserve.training.layers import BatchNormSettings
from bnserve.training.scaling import apply_clip


def spec_from_meta(params: dict[str, np.ndarray], meta: dict[str, Any]) -> model.NetSpec:
    """The network's shape as a finished run describes it (depth read from the params)."""
    return model.NetSpec(
        n_hidden=model.hidden_count(params),
        activation=meta["activation"],
        batchnorm=bool(meta["batchnorm"]),
        bn=BatchNormSettings(epsilon=float(meta["epsilon"])),
    )


def predict(params: dict[str, np.ndarray], meta: dict[str, Any], x_raw: np.ndarray) -> np.ndarray:
    """Score raw (unstandardized) features x_raw (N, F) in x_raw's dtype.

    Returns probabilities (N, C) for classification or y (N, T) in the target's units for
    regression (after the inverse of meta's target_transform, if any). Batch norm uses the
    frozen running statistics (train=False). With params' input.clip (robust scaling) the
    inputs it marks are smooth-clipped after scaling (training/scaling.py).
    """
    dtype = x_raw.dtype if np.issubdtype(x_raw.dtype, np.floating) else np.float64
    x_raw = np.asarray(x_raw, dtype=dtype)
    if x_raw.ndim != 2 or x_raw.shape[1] != params["input.mean"].shape[0]:
        raise ValueError(
            f"x_raw has shape {x_raw.shape}, expected (N, {params['input.mean'].shape[0]})"
        )
    cast = {name: np.asarray(array, dtype=dtype) for name, array in params.items()}
    x = apply_clip((x_raw - cast["input.mean"]) / cast["input.std"], cast.get("input.clip"))
    scores, _, _ = model.forward(cast, x, spec_from_meta(params, meta), train=False)
    if meta["task"] == "classification":
        return layers.softmax(scores)
    y: np.ndarray = scores * cast["target.std"] + cast["target.mean"]
    return target_transform.inverse(y, target_transform.transform_of(meta))
