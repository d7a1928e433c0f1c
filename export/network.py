"""Check a run's meta, config and parameters before folding: the wrapper that explains.

`export/fold.py` holds the pure arithmetic; this module makes sure the arrays it receives are the
ones the run's config describes, finite, and safe to divide by, and says exactly what is wrong
otherwise (file, key, shape, unit index).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.export.errors import ExportError
from bnserve.training.config import (
    ACTIVATIONS,
    RUNNING_VAR_MODES,
    STATS_MODES,
    TARGET_TRANSFORMS,
    TASKS,
    TrainConfig,
)
from bnserve.training.model import param_shapes


@dataclass(frozen=True)
class NetworkSpec:
    """What a run's config and meta say the network is; parameters are checked against it."""

    feature_count: int
    hidden_sizes: tuple[int, ...]
    output_count: int  # classes C or targets T
    activation: str
    batchnorm: bool
    epsilon: float
    task: str
    target_transform: str = "none"  # regression: the inverse the graph applies last
    input_scaling: str = "standard"  # robust: params hold input.clip (training/scaling.py)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """[F, n_1, ..., n_L, C or T]: the sizes `bnserve.training.model.param_shapes` takes."""
        return (self.feature_count, *self.hidden_sizes, self.output_count)


def spec_from_run(meta: Mapping[str, Any], config: TrainConfig) -> NetworkSpec:
    """The network meta.json and config.json describe; ExportError names any bad or
    inconsistent value (the exporter relies on meta for the graph and on both for metadata)."""
    task = _choice(meta, "task", TASKS)
    activation = _choice(meta, "activation", ACTIVATIONS)
    batchnorm = meta.get("batchnorm")
    if not isinstance(batchnorm, bool):
        raise ExportError(f"meta.json: 'batchnorm' is {batchnorm!r}; expected true or false")
    epsilon = _number(meta, "epsilon")
    _choice(meta, "stats", STATS_MODES)
    _choice(meta, "running_var", RUNNING_VAR_MODES)
    if batchnorm:
        _number(meta, "bn_momentum")
    if not isinstance(meta.get("run_id"), str) or not meta["run_id"]:
        raise ExportError(f"meta.json: 'run_id' is {meta.get('run_id')!r}; expected a string")
    for key, config_value in (
        ("activation", config.activation),
        ("batchnorm", config.batchnorm),
        ("epsilon", config.bn_epsilon),
        ("task", config.task or task),  # config.task None: inferred from the data at training
    ):
        if meta[key] != config_value:
            raise ExportError(
                f"meta.json: {key!r} is {meta[key]!r} but config.json says {config_value!r}"
            )
    names_key = "class_names" if task == "classification" else "target_names"
    feature_names = _string_list(meta, "feature_names")
    output_names = _string_list(meta, names_key)
    if task == "classification" and len(output_names) < 2:
        raise ExportError(f"meta.json: 'class_names' has {len(output_names)} entries; need ≥ 2")
    transform = "none"
    if task == "regression" and meta.get("target_transform") is not None:
        transform = _choice(meta, "target_transform", TARGET_TRANSFORMS)
    return NetworkSpec(
        feature_count=len(feature_names),
        hidden_sizes=tuple(config.hidden),
        output_count=len(output_names),
        activation=activation,
        batchnorm=batchnorm,
        epsilon=epsilon,
        task=task,
        target_transform=transform,
        input_scaling=config.input_scaling,
    )


def _choice(meta: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = meta.get(key)
    if not isinstance(value, str) or value not in allowed:
        raise ExportError(f"meta.json: {key!r} is {value!r}; expected one of {allowed}")
    return value


def _number(meta: Mapping[str, Any], key: str) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ExportError(f"meta.json: {key!r} is {value!r}; expected a finite number")
    if value < 0:
        raise ExportError(f"meta.json: {key!r} is {value!r}; expected a number ≥ 0")
    return float(value)


def _string_list(meta: Mapping[str, Any], key: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ExportError(f"meta.json: {key!r} is {value!r}; expected a non-empty list of names")
    return value


def check_params(params: Mapping[str, np.ndarray], spec: NetworkSpec) -> None:
    """Raise ExportError unless params hold exactly the spec's keys and shapes (the params.npz
    layout, `bnserve.training.model.param_shapes`), finite, foldable.

    Foldable: running_var + ε > 0 (so 1/√(σ²+ε) exists) and input/target std > 0.
    """
    shapes = param_shapes(
        spec.layer_sizes,
        batchnorm=spec.batchnorm,
        task=spec.task,
        input_clip=spec.input_scaling == "robust",
    )
    missing = sorted(set(shapes) - set(params))
    unexpected = sorted(set(params) - set(shapes))
    described = (
        f"{spec.feature_count} features, hidden {list(spec.hidden_sizes)}, "
        f"{spec.output_count} outputs, batchnorm {'on' if spec.batchnorm else 'off'}"
    )
    if missing:
        raise ExportError(
            f"params.npz: missing {', '.join(missing)}; the config describes {described}"
        )
    if unexpected:
        raise ExportError(
            f"params.npz: unexpected {', '.join(unexpected)}; the config describes {described}"
        )
    for key, shape in shapes.items():
        value = params[key]
        if value.shape != shape:
            raise ExportError(
                f"params.npz: {key!r} has shape {value.shape}, but the config ({described}) "
                f"needs {shape}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ExportError(f"params.npz: {key!r} has dtype {value.dtype}; expected floats")
        bad = np.flatnonzero(~np.isfinite(value))
        if bad.size:
            where = np.unravel_index(bad[0], shape)
            raise ExportError(
                f"params.npz: {key!r} has {bad.size} non-finite value(s), first "
                f"{value[where]} at index {tuple(int(i) for i in where)}"
            )
    if "input.clip" in shapes and not np.all(np.isin(params["input.clip"], (0.0, 1.0))):
        raise ExportError("params.npz: 'input.clip' holds values other than 0 and 1")
    for key in ("input.std", "target.std"):
        if key in shapes:
            _require_positive(key, params[key], 0.0, "standard deviations must be > 0")
    if spec.batchnorm:
        for key in [name for name in shapes if name.endswith(".running_var")]:
            _require_positive(
                key,
                params[key],
                spec.epsilon,
                f"running_var + ε (ε = {spec.epsilon:g}) must be > 0",
            )


def _require_positive(key: str, value: np.ndarray, offset: float, why: str) -> None:
    bad = np.flatnonzero(value + offset <= 0)
    if bad.size:
        raise ExportError(
            f"params.npz: {key!r} is {float(value[bad[0]])!r} at unit {int(bad[0])} "
            f"({bad.size} unit(s) in all): {why}"
        )
