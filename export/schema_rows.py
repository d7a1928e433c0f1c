"""The rows a run with a schema is checked and described with: raw held-out records and the
training split's design inputs, rebuilt from the run's data file.

heldout.npz holds design inputs (one-hots, fills), not the raw records a format-2 graph takes,
so the held-out records are rebuilt from the data file through the run's own split and schema
(training.train.prepare with the stored schema) and checked against heldout.npz. When the file
is gone or no longer gives the run's split, records are synthesized from the schema instead
(levels by training count, numbers around their fill) and the fold check still runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnserve.export.distribution import ColumnSummary, summarize_design
from bnserve.export.raw_rows import RawRows, design_of, raw_from_stored, synthetic_rows
from bnserve.training.data.schema import TableSchema
from bnserve.training.errors import TrainingError
from bnserve.training.rundir import Run

SYNTHETIC_ROWS = 64  # records synthesized from the schema when the data file is gone


@dataclass(frozen=True)
class SchemaRows:
    """Raw held-out records, and a summary of the training rows (or, with a note why, of the
    held-out design inputs of heldout.npz) for the drift reference."""

    heldout: RawRows
    heldout_source: str  # "held-out records" or "records synthesized from the schema"
    training: ColumnSummary
    training_source: str  # "training split" or "held-out split"
    note: str  # why the data file was not used; empty when it was


def schema_rows(run: Run, schema: TableSchema) -> SchemaRows:
    """Rebuild the run's raw held-out records and training design from its data file; fall
    back to synthesized records and heldout.npz's design (with a note) when that fails."""
    from bnserve.training.train import HELDOUT_MAX_ROWS, heldout_source, prepare

    heldout_design = np.asarray(run.heldout_x, dtype=np.float64)
    try:
        prepared = prepare(run.config, schema=schema)
    except (TrainingError, ValueError, OSError) as error:
        return _synthesized(schema, heldout_design, f"training data not readable ({error})")
    if not (
        prepared.input_mean.shape == run.params["input.mean"].shape
        and np.allclose(prepared.input_mean, run.params["input.mean"], rtol=1e-6, atol=1e-6)
        and np.allclose(prepared.input_std, run.params["input.std"], rtol=1e-6, atol=1e-6)
    ):
        why = f"{run.config.data} no longer gives the split the run was standardized on"
        return _synthesized(schema, heldout_design, why)
    dataset, split = prepared.dataset, prepared.split
    rows = getattr(split, heldout_source(split))[:HELDOUT_MAX_ROWS]
    raw = raw_from_stored(schema, dataset.vocabularies, np.asarray(dataset.x[rows]))
    rebuilt = design_of(schema, raw)
    if rebuilt.shape != heldout_design.shape or not np.allclose(
        rebuilt, heldout_design, rtol=1e-6, atol=1e-6
    ):
        why = f"{run.config.data}'s held-out rows differ from heldout.npz"
        return _synthesized(schema, heldout_design, why)
    training = summarize_design(prepared.x_train.raw_chunks(), schema)
    return SchemaRows(raw, "held-out records", training, "training split", "")


def _synthesized(schema: TableSchema, heldout_design: np.ndarray, why: str) -> SchemaRows:
    return SchemaRows(
        synthetic_rows(schema, SYNTHETIC_ROWS),
        "records synthesized from the schema",
        summarize_design([heldout_design], schema),
        "held-out split",
        why,
    )
