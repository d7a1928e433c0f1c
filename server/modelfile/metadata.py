"""Parse and check the `bnserve.*` metadata an exported model carries (docs/contracts.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from bnserve.server.modelfile.contract import (
    FORMAT_VERSIONS,
    PREFIX,
    SCHEMA_FORMAT,
    TASKS,
    MetadataKey,
    Tolerance,
    output_names_key,
)
from bnserve.server.modelfile.schema import InputSchema, SchemaError, parse_schema
from bnserve.server.plane.errors import ModelLoadError
from bnserve.server.plane.inputs import Columns, ModelInput


@dataclass(frozen=True)
class ModelCard:
    """What the model's metadata says about it, parsed and checked.

    reference_inputs: (R, F) float32 raw features (a format-2 numbers-only model: NaN where
    missing), or for a mixed model `Columns` of R raw rows; schema: bnserve.schema of a
    format-2 model (None: format 1); reference_outputs: output name → (R, C) float64
    probabilities, (R,) int64 labels or (R, T) float64 regression values.
    """

    task: str
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    target_names: tuple[str, ...]
    graph_sha256: str
    reference_inputs: ModelInput
    reference_outputs: dict[str, np.ndarray]
    tolerance: Tolerance
    entries: dict[str, str]  # every bnserve.* entry verbatim, keys without the prefix
    schema: InputSchema | None = None

    @property
    def mixed(self) -> bool:
        """One graph input per column (the table had a categorical column)."""
        return self.schema is not None and self.schema.mixed

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def get(self, key: str) -> str:
        """A metadata value by key without the prefix; empty when absent."""
        return self.entries.get(key, "")


def parse_model_card(metadata: Mapping[str, str], source: str) -> ModelCard:
    """Check and parse the custom metadata map of the model file named by source."""
    entries = {
        name[len(PREFIX) :]: value for name, value in metadata.items() if name.startswith(PREFIX)
    }
    reader = _Reader(entries, source)
    key = MetadataKey
    if (model_format := reader.text(key.FORMAT)) not in FORMAT_VERSIONS:
        reader.fail(
            key.FORMAT,
            f"is {model_format!r}; this server reads formats {', '.join(FORMAT_VERSIONS)}",
        )
    task = reader.text(key.TASK)
    if task not in TASKS:
        reader.fail(key.TASK, f"is {task!r}; expected one of {', '.join(TASKS)}")
    feature_names = reader.names(key.FEATURE_NAMES)
    output_names = reader.names(output_names_key(task))
    class_names = output_names if task == "classification" else ()
    target_names = output_names if task == "regression" else ()
    graph_hash = reader.text(key.GRAPH_SHA256).lower()
    if len(graph_hash) != 64 or any(c not in "0123456789abcdef" for c in graph_hash):
        reader.fail(key.GRAPH_SHA256, f"is {graph_hash!r}, not a hex sha256")
    schema = None
    reference_inputs: ModelInput
    if model_format == SCHEMA_FORMAT:
        try:
            schema = parse_schema(reader.text(key.SCHEMA))
        except SchemaError as error:
            reader.fail(key.SCHEMA, str(error))
        reference_inputs = reader.reference_columns(schema, feature_names)
    else:
        reference_inputs = reader.matrix(key.REFERENCE_INPUTS, len(feature_names), np.float32)
    rows = reference_inputs.shape[0]
    raw_outputs = reader.json_value(key.REFERENCE_OUTPUTS)
    if not isinstance(raw_outputs, dict):
        reader.fail(key.REFERENCE_OUTPUTS, "is not a JSON object")
    if task == "classification":
        reference_outputs = {
            "probabilities": reader.array_in(
                raw_outputs, "probabilities", (rows, len(class_names))
            ),
            "label": reader.array_in(raw_outputs, "label", (rows,)).astype(np.int64),
        }
    else:
        reference_outputs = {"y": reader.array_in(raw_outputs, "y", (rows, len(target_names)))}
    return ModelCard(
        task=task,
        feature_names=feature_names,
        class_names=class_names,
        target_names=target_names,
        graph_sha256=graph_hash,
        reference_inputs=reference_inputs,
        reference_outputs=reference_outputs,
        tolerance=reader.tolerance(key.REFERENCE_TOLERANCE),
        entries=entries,
        schema=schema,
    )


class _Reader:
    """Typed access to metadata entries; every failure names the file and the key."""

    def __init__(self, entries: dict[str, str], source: str) -> None:
        self.entries = entries
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ModelLoadError(f"model {self.source}: metadata {PREFIX}{key} {problem}")

    def text(self, key: str) -> str:
        if key not in self.entries:
            self.fail(key, "is missing (was the model made by `bnserve export`?)")
        return self.entries[key]

    def json_value(self, key: str) -> Any:
        try:
            return json.loads(self.text(key))
        except json.JSONDecodeError as error:
            self.fail(key, f"is not valid JSON ({error})")

    def names(self, key: str) -> tuple[str, ...]:
        value = self.json_value(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.fail(key, "is not a non-empty JSON list of strings")
        if len(set(value)) != len(value):
            self.fail(key, "lists a name twice")
        return tuple(value)

    def matrix(self, key: str, columns: int, dtype: type) -> np.ndarray:
        try:
            array: np.ndarray = np.asarray(self.json_value(key), dtype=dtype)
        except (TypeError, ValueError) as error:
            self.fail(key, f"is not a list of numeric rows ({error})")
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != columns:
            self.fail(key, f"has shape {array.shape}; expected (R ≥ 1, {columns})")
        return array

    def reference_columns(self, schema: InputSchema, feature_names: tuple[str, ...]) -> ModelInput:
        """bnserve.reference_inputs of a format-2 model: {input: [[v], …]} per graph input (null:
        missing), as `Columns` (mixed) or the (R, F) float32 x (numbers only, NaN: missing)."""
        key = MetadataKey.REFERENCE_INPUTS
        expected = schema.names if schema.mixed else schema.inputs[0].columns
        if feature_names != expected:
            self.fail(
                MetadataKey.FEATURE_NAMES,
                f"is {list(feature_names)}; bnserve.schema says {list(expected)}",
            )
        value = self.json_value(key)
        if not isinstance(value, dict) or set(value) != set(schema.names):
            self.fail(key, f"is not a JSON object with one entry per input {list(schema.names)}")
        arrays: dict[str, np.ndarray] = {}
        for column in schema.inputs:
            width = len(column.columns)
            try:
                if column.is_categorical:
                    rows = value[column.name]
                    if not all(
                        isinstance(row, list) and len(row) == 1 and isinstance(row[0], str)
                        for row in rows
                    ):
                        raise ValueError("rows must be [string]")
                    array = np.array([row[0] for row in rows], dtype=object).reshape(-1, 1)
                else:
                    array = np.asarray(value[column.name], dtype=np.float32)
            except (TypeError, ValueError) as error:
                self.fail(key, f"[{column.name!r}] is not a list of [value] rows ({error})")
            if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != width:
                self.fail(
                    key, f"[{column.name!r}] has shape {array.shape}; expected (R ≥ 1, {width})"
                )
            arrays[column.name] = array
        counts = {array.shape[0] for array in arrays.values()}
        if len(counts) != 1:
            self.fail(key, f"has inputs of different row counts {sorted(counts)}")
        if not schema.mixed:
            return arrays[schema.inputs[0].name]
        return Columns(arrays)

    def array_in(self, container: dict[str, Any], name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = f"{MetadataKey.REFERENCE_OUTPUTS}[{name!r}]"
        if name not in container:
            self.fail(key, "is missing")
        try:
            array = np.asarray(container[name], dtype=np.float64)
        except (TypeError, ValueError) as error:
            self.fail(key, f"is not numeric ({error})")
        if array.shape != shape:
            self.fail(key, f"has shape {array.shape}; expected {shape}")
        return array

    def tolerance(self, key: str) -> Tolerance:
        value = self.json_value(key)
        if not isinstance(value, dict) or "abs" not in value:
            self.fail(key, 'is not a JSON object with "abs" (and optionally "rel")')
        try:
            tolerance = Tolerance(abs=float(value["abs"]), rel=float(value.get("rel", 0.0)))
        except (TypeError, ValueError) as error:
            self.fail(key, f"has a non-numeric bound ({error})")
        # abs scales with the targets' spread for regression (the exporter writes 1e-4·max std),
        # so only finiteness bounds it; rel is a fraction.
        if not (np.isfinite(tolerance.abs) and tolerance.abs >= 0 and 0 <= tolerance.rel < 1):
            self.fail(key, f"bounds {tolerance} must be abs finite ≥ 0 and rel in [0, 1)")
        return tolerance
