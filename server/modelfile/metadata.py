"""Parse and check the `bnserve.*` metadata an exported model carries (docs/contracts.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from bnserve.server.modelfile.contract import (
    FORMAT_SCHEMA,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    INPUT_NAME,
    PREFIX,
    TASKS,
    MetadataKey,
    Tolerance,
    output_names_key,
)
from bnserve.server.modelfile.schema import CATEGORICAL, InputSchema
from bnserve.server.plane.errors import ModelLoadError


@dataclass(frozen=True)
class ModelCard:
    """What the model's metadata says about it, parsed and checked.

    reference_inputs: (R, F) float32 raw features (x), NaN missing for a format-2 numbers-only
    model, and (R, 0) for a format-2 mixed model, whose references are reference_feeds only;
    reference_feeds: the reference rows as onnxruntime inputs by graph input name (x (R, F), or
    per column (R, 1) float32 or object strings, "" missing); reference_outputs: output name →
    (R, C) float64 probabilities, (R,) int64 labels or (R, T) float64 regression values.
    format: bnserve.format ("1" or "2"); schema: the raw inputs of a format-2 model.
    """

    task: str
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    target_names: tuple[str, ...]
    graph_sha256: str
    reference_inputs: np.ndarray
    reference_outputs: dict[str, np.ndarray]
    tolerance: Tolerance
    entries: dict[str, str]  # every bnserve.* entry verbatim, keys without the prefix
    format: str = FORMAT_VERSION
    schema: InputSchema | None = None
    reference_feeds: dict[str, np.ndarray] = field(default_factory=dict)

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
            key.FORMAT, f"is {model_format!r}; this server reads formats {list(FORMAT_VERSIONS)}"
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
    if model_format == FORMAT_SCHEMA:
        schema = reader.schema(key.SCHEMA)
        reference_feeds = reader.feeds(key.REFERENCE_INPUTS, schema)
        rows = len(next(iter(reference_feeds.values())))
        reference_inputs = reference_feeds.get(INPUT_NAME, np.zeros((rows, 0), dtype=np.float32))
        if schema.mixed:
            reference_inputs = np.zeros((rows, 0), dtype=np.float32)
    else:
        reference_inputs = reader.matrix(key.REFERENCE_INPUTS, len(feature_names), np.float32)
        reference_feeds = {INPUT_NAME: reference_inputs}
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
        format=model_format,
        schema=schema,
        reference_feeds=reference_feeds,
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

    def schema(self, key: str) -> InputSchema:
        try:
            return InputSchema.from_json(self.json_value(key))
        except ValueError as error:
            self.fail(key, f"is not a valid input schema ({error})")

    def feeds(self, key: str, schema: InputSchema) -> dict[str, np.ndarray]:
        """A format-2 model's reference rows: per graph input, R rows of numbers (null is NaN)
        or strings, as onnxruntime takes them."""
        value = self.json_value(key)
        names = [graph_input.name for graph_input in schema.inputs]
        if not isinstance(value, dict) or sorted(value) != sorted(names):
            self.fail(key, f"is not a JSON object with one entry per graph input {names}")
        feeds: dict[str, np.ndarray] = {}
        for graph_input in schema.inputs:
            rows = value[graph_input.name]
            width = len(graph_input.columns)
            if (
                not isinstance(rows, list)
                or not rows
                or not all(isinstance(row, list) and len(row) == width for row in rows)
            ):
                self.fail(key, f"[{graph_input.name!r}] is not a list of rows of {width} value(s)")
            if graph_input.kind == CATEGORICAL:
                if not all(isinstance(cell, str) for row in rows for cell in row):
                    self.fail(key, f"[{graph_input.name!r}] holds a value that is not a string")
                cells = np.empty((len(rows), width), dtype=object)
                cells[:, :] = rows
                feeds[graph_input.name] = cells
                continue
            try:
                numbers = [
                    [np.nan if cell is None else float(cell) for cell in row] for row in rows
                ]
            except (TypeError, ValueError) as error:
                self.fail(key, f"[{graph_input.name!r}] is not numeric ({error})")
            feeds[graph_input.name] = np.asarray(numbers, dtype=np.float32)
        counts = {len(rows) for rows in feeds.values()}
        if len(counts) != 1:
            self.fail(key, "gives the inputs different numbers of rows")
        return feeds

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
