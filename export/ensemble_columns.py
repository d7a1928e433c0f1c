"""Ensembles of runs trained on raw columns (a schema.json): what differs from numbers in x.

Members trained on one table share its columns (names and kinds), but each has its own
schema: a fold model's fills and kept levels come from its own training rows. Their first
layers become one front over a merged schema (export/ensemble_front.py) reading the SAME graph
inputs, and everything is checked on raw records:

- the members must share the graph inputs (`bnserve.schema` "inputs": names, kinds, order);
- the check's records: every member's held-out records, every member's special rows (every
  cell missing, every level unseen, every level of its columns) and edge rows;
- each member's numpy path reads the records through its own schema (`design_of`);
- the card's `bnserve.schema` and the features of `bnserve.drift` are the first member's (the
  server reads the schema for the input names and kinds and counts unseen levels against the
  first member's levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.export.columns import graph_inputs, needs_front
from bnserve.export.distribution import TrainingRows, schema_drift_metadata
from bnserve.export.errors import ExportError
from bnserve.export.metadata import ReferenceRows
from bnserve.export.raw_rows import RawRows, design_of, edge_rows, reference_json
from bnserve.export.raw_rows import special_rows as member_special_rows
from bnserve.export.schema_rows import SchemaRows, schema_rows
from bnserve.training.data.schema import TableSchema
from bnserve.training.inference import predict
from bnserve.training.rundir import Run


def check_same_inputs(runs: Sequence[Run], schemas: Sequence[TableSchema | None]) -> None:
    """Either no member has a schema, or every one has and they share the graph inputs
    (names, kinds, order); ExportError names the first member that differs, in one line."""
    first, first_schema = runs[0], schemas[0]
    for run, schema in zip(runs[1:], schemas[1:], strict=True):
        if (schema is None) != (first_schema is None):
            has, lacks = (run, first) if schema is not None else (first, run)
            raise ExportError(
                f"{has.path} takes raw columns (a schema.json) but {lacks.path} takes numbers "
                "in x; ensemble members must share the graph inputs"
            )
        if schema is None or first_schema is None:
            continue
        mine, theirs = graph_inputs(schema), graph_inputs(first_schema)
        if mine != theirs:
            raise ExportError(
                f"{run.path}: its graph inputs {_described(mine)} differ from {first.path}'s "
                f"{_described(theirs)}; ensemble members must share them (names, kinds, order)"
            )


def _described(inputs: list[dict[str, Any]]) -> str:
    return "[" + ", ".join(f"{item['name']} ({item['kind']})" for item in inputs) + "]"


@dataclass(frozen=True)
class RawProbe:
    """The records the ensemble is checked on; the first `heldout_count` are held-out ones."""

    records: RawRows
    heldout_count: int
    found: tuple[SchemaRows, ...]  # each member's held-out records and training summary


def raw_probe(runs: Sequence[Run], schemas: Sequence[TableSchema]) -> RawProbe:
    """Every member's held-out records, then each member's special rows and edge rows."""
    found = tuple(schema_rows(run, schema) for run, schema in zip(runs, schemas, strict=True))
    heldout = RawRows.concat([rows.heldout for rows in found])
    parts = [heldout]
    for schema in schemas:
        if needs_front(schema):
            parts += [member_special_rows(schema), edge_rows(schema, heldout)]
    return RawProbe(RawRows.concat(parts), len(heldout), found)


def member_design(schema: TableSchema, records: RawRows) -> np.ndarray:
    """The design inputs (R, D_m) of records as member m's numpy path reads them, float32-exact."""
    design: np.ndarray = design_of(schema, records).astype(np.float32).astype(np.float64)
    return design


def raw_mean_prediction(
    runs: Sequence[Run], schemas: Sequence[TableSchema], records: RawRows
) -> np.ndarray:
    """The mean of the members' numpy paths on raw records, each through its own schema:
    probabilities (R, C) or y (R, T)."""
    outputs = [
        predict(run.params, run.meta, member_design(schema, records))
        for run, schema in zip(runs, schemas, strict=True)
    ]
    mean: np.ndarray = np.mean(outputs, axis=0)
    return mean


def raw_reference_rows(
    runs: Sequence[Run], schemas: Sequence[TableSchema], probe: RawProbe, count: int
) -> ReferenceRows:
    """`count` raw records spread over the first member's held-out set, then every member's
    special rows (every cell missing, every level unseen, every level of its columns), with
    the mean of the members' outputs: format-2 reference rows for the parity gate."""
    heldout = probe.found[0].heldout
    indices = np.unique(np.linspace(0, len(heldout) - 1, min(count, len(heldout))).astype(int))
    parts = [heldout.take(indices)]
    parts += [member_special_rows(schema) for schema in schemas if needs_front(schema)]
    records = RawRows.concat(parts)
    outputs = raw_mean_prediction(runs, schemas, records)
    design = design_of(schemas[0], records)
    raw = reference_json(schemas[0], records)
    if runs[0].meta["task"] == "classification":
        return ReferenceRows(
            design, {"probabilities": outputs, "label": np.argmax(outputs, axis=1)}, raw
        )
    return ReferenceRows(design, {"y": outputs}, raw)


def raw_drift_features(
    probe: RawProbe, schema: TableSchema, first: Run
) -> tuple[dict[str, Any], TrainingRows]:
    """`bnserve.drift` without layers, as the first member's export writes it, and the rows
    it describes."""
    found = probe.found[0]
    params = {name: np.asarray(value, dtype=np.float64) for name, value in first.params.items()}
    drift = schema_drift_metadata(found.training, found.training_source, schema, params, 0, "")
    return drift, TrainingRows(found.training.numeric, found.training_source, found.note)
