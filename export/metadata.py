"""The model's metadata_props (docs/contracts.md, "The ONNX model"): what the server reads.

All values are strings; structured ones are JSON. `bnserve.graph_sha256` hashes the serialized
GraphProto (ModelProto field 7), which holds the nodes and weights but not the metadata itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx

from bnserve.server.modelfile.contract import (
    FORMAT_SCHEMA,
    FORMAT_VERSION,
    MetadataKey,
    Tolerance,
    output_names_key,
)


@dataclass(frozen=True)
class ReferenceRows:
    """Held-out inputs (R, F) float32 and the numpy inference path's float64 outputs on them."""

    inputs: np.ndarray
    outputs: dict[str, np.ndarray]  # "probabilities" (R, C) and "label" (R,), or "y" (R, T)
    # a format-2 model's raw records: graph input name → R rows (export/raw_rows.reference_json)
    raw: dict[str, list[list[Any]]] | None = None


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
    schema: Mapping[str, Any] | None = None,
    feature_names: Sequence[str] | None = None,
) -> dict[str, str]:
    """Every `bnserve.*` key for a model, from the run's meta.json and the verification result.

    `model` must be the final graph: its hash is taken here. `drift` is the training
    distribution for drift monitoring (export/distribution.py drift_metadata), stored compactly.
    `schema` (export/columns.py schema_metadata) makes a format-2 model: `feature_names` then
    names the used columns and references.raw holds the reference records.
    """
    task = meta["task"]
    names_key = output_names_key(task)
    # tolist() gives Python floats; json writes their shortest repr, which round-trips exactly
    # (a float32 value widened to float64 included), so readers get the very same numbers.
    reference_outputs = {name: value.tolist() for name, value in references.outputs.items()}
    key = MetadataKey
    if schema is not None and references.raw is not None:
        reference_inputs = json.dumps(references.raw)
    else:
        reference_inputs = json.dumps(
            references.inputs.astype(np.float32).astype(np.float64).tolist()
        )
    names = meta["feature_names"] if feature_names is None else feature_names
    values = {
        key.FORMAT: FORMAT_VERSION if schema is None else FORMAT_SCHEMA,
        key.TASK: task,
        key.FEATURE_NAMES: json.dumps(list(names)),
        names_key: json.dumps(list(meta[names_key.value])),
        key.STATS: str(meta["stats"]),
        key.BN_MOMENTUM: str(meta["bn_momentum"]) if meta["batchnorm"] else "",
        key.RUNNING_VAR: str(meta["running_var"]),
        key.EPSILON: epsilon_text(meta["epsilon"]),
        key.FOLDED: "true" if folded else "false",
        key.FOLD_MAX_ABS_ERROR: repr(float(fold_max_abs_error)),
        key.RUN_ID: str(meta["run_id"]),
        key.PARAMS_SHA256: str(meta["params_sha256"]),
        key.GRAPH_SHA256: graph_sha256(model),
        key.REFERENCE_INPUTS: reference_inputs,
        key.REFERENCE_OUTPUTS: json.dumps(reference_outputs),
        key.REFERENCE_TOLERANCE: tolerance.as_json(),
        key.TRAINING: json.dumps(dict(training), sort_keys=True, default=str),
        key.CREATED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if drift is not None:
        values[key.DRIFT] = json.dumps(dict(drift), separators=(",", ":"))
    if schema is not None:
        values[key.SCHEMA] = json.dumps(dict(schema), separators=(",", ":"))
    return {name.full: value for name, value in values.items()}


def epsilon_text(epsilon: float | Sequence[float]) -> str:
    """ε as `bnserve.epsilon` holds it: one value's repr ("1e-05"); an imported model's distinct
    values, ascending, as a JSON list when its nodes differ, and "" when it has no batch norm."""
    if not isinstance(epsilon, Sequence):
        return repr(float(epsilon))
    distinct = sorted({float(value) for value in epsilon})
    if len(distinct) == 1:
        return repr(distinct[0])
    return json.dumps(distinct) if distinct else ""


def attach_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the model's metadata_props with `metadata` (in place; the graph is untouched)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(metadata))


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}
