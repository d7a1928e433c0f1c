"""The model's metadata_props (docs/contracts.md, "The ONNX model"): what the server reads.

All values are strings; structured ones are JSON. `bnserve.graph_sha256` hashes the serialized
GraphProto (ModelProto field 7), which holds the nodes and weights but not the metadata itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx

FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Tolerance:
    """A comparison passes where |onnx − numpy| ≤ abs + rel·|numpy|, elementwise."""

    abs: float
    rel: float

    def as_json(self) -> str:
        """`{"abs": …}` when rel is 0 (probabilities), else `{"rel": …, "abs": …}`."""
        if self.rel == 0:
            return json.dumps({"abs": self.abs})
        return json.dumps({"rel": self.rel, "abs": self.abs})


@dataclass(frozen=True)
class ReferenceRows:
    """Held-out inputs (R, F) float32 and the numpy inference path's float64 outputs on them."""

    inputs: np.ndarray
    outputs: dict[str, np.ndarray]  # "probabilities" (R, C) and "label" (R,), or "y" (R, T)


def graph_sha256(model: onnx.ModelProto) -> str:
    """Hex sha256 of model.graph.SerializeToString(): the bytes of ModelProto field 7."""
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()


def build_metadata(
    *,
    meta: Mapping[str, Any],
    training: Mapping[str, Any],
    folded: bool,
    fold_max_abs_error: float,
    tolerance: Tolerance,
    references: ReferenceRows,
    model: onnx.ModelProto,
    drift: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Every `bnserve.*` key for a model, from the run's meta.json and the verification result.

    `model` must be the final graph: its hash is taken here. `drift` is the training
    distribution for drift monitoring (export.distribution.drift_metadata), stored compactly.
    """
    task = meta["task"]
    names_key = "class_names" if task == "classification" else "target_names"
    # tolist() gives Python floats; json writes their shortest repr, which round-trips exactly
    # (a float32 value widened to float64 included), so readers get the very same numbers.
    reference_outputs = {name: value.tolist() for name, value in references.outputs.items()}
    return {
        "bnserve.format": FORMAT_VERSION,
        "bnserve.task": task,
        "bnserve.feature_names": json.dumps(list(meta["feature_names"])),
        f"bnserve.{names_key}": json.dumps(list(meta[names_key])),
        "bnserve.stats": str(meta["stats"]),
        "bnserve.bn_momentum": str(meta["bn_momentum"]) if meta["batchnorm"] else "",
        "bnserve.running_var": str(meta["running_var"]),
        "bnserve.epsilon": repr(float(meta["epsilon"])),
        "bnserve.folded": "true" if folded else "false",
        "bnserve.fold_max_abs_error": repr(float(fold_max_abs_error)),
        "bnserve.run_id": str(meta["run_id"]),
        "bnserve.params_sha256": str(meta["params_sha256"]),
        "bnserve.graph_sha256": graph_sha256(model),
        "bnserve.reference_inputs": json.dumps(
            references.inputs.astype(np.float32).astype(np.float64).tolist()
        ),
        "bnserve.reference_outputs": json.dumps(reference_outputs),
        "bnserve.reference_tolerance": tolerance.as_json(),
        "bnserve.training": json.dumps(dict(training), sort_keys=True, default=str),
        "bnserve.created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(
            {"bnserve.drift": json.dumps(dict(drift), separators=(",", ":"))}
            if drift is not None
            else {}
        ),
    }


def attach_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the model's metadata_props with `metadata` (in place; the graph is untouched)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(metadata))


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}
