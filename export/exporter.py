"""Export one training run to a verified ONNX file: load, check, fold, build, verify, write.

Nothing is written unless every step passed; the file appears atomically
(`bnserve.atomic.write_bytes`), so a reader never sees half a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bnserve.atomic import write_bytes
from bnserve.export.columns import (
    ColumnFront,
    input_names,
    is_mixed,
    needs_front,
    schema_metadata,
)
from bnserve.export.distribution import (
    TrainingRows,
    drift_metadata,
    schema_drift_metadata,
    training_rows,
)
from bnserve.export.errors import ExportError
from bnserve.export.fold import fold_params
from bnserve.export.graph import (
    FOLDED_PREACTIVATION,
    UNFOLDED_PREACTIVATION,
    build_folded_model,
    build_unfolded_model,
)
from bnserve.export.metadata import ReferenceRows, attach_metadata, build_metadata, graph_sha256
from bnserve.export.network import NetworkSpec, check_params, spec_from_run
from bnserve.export.raw_rows import (
    RawRows,
    design_of,
    edge_rows,
    feeds_of,
    reference_json,
    special_rows,
)
from bnserve.export.schema_rows import SchemaRows, schema_rows
from bnserve.export.verify import (
    EDGE_ROWS,
    PROBABILITY_TOLERANCE,
    LayerVerification,
    Verification,
    check_layers,
    compare_outputs,
    onnx_session,
    probe_rows,
    regression_tolerance,
    score_feeds,
    score_onnx,
)
from bnserve.server.modelfile.contract import Tolerance
from bnserve.training.data.schema import TableSchema
from bnserve.training.errors import RunError, disk_full, os_error_line
from bnserve.training.inference import predict
from bnserve.training.rundir import Run, load_run, read_json


@dataclass(frozen=True)
class ExportSettings:
    """What `bnserve export` was asked to do."""

    run_dir: Path  # a finished training run (docs/contracts.md layout)
    out: Path  # the .onnx file to write
    unfolded: bool = False  # keep BatchNormalization nodes and Sub/Div standardization (audit)
    force: bool = False  # replace an existing output file
    reference_rows: int = 8  # held-out rows embedded in the metadata for the server's parity gate


@dataclass(frozen=True)
class ExportReport:
    """What was written and how well it matched the numpy inference path."""

    out: Path
    folded: bool
    verification: Verification
    layers: LayerVerification
    node_count: int
    size_bytes: int
    graph_sha256: str
    drift_rows: TrainingRows | None = None  # what the drift reference was measured on
    checked: str = ""  # the rows the fold was checked on, described


def export_run(settings: ExportSettings) -> ExportReport:
    """Export settings.run_dir to settings.out; on bad input raise ExportError, write nothing."""
    check_output_path(settings.out, settings.force)
    try:
        run = load_run(settings.run_dir)
    except RunError as error:
        raise ExportError(f"not an exportable run: {error}") from None
    schema = run_schema(settings.run_dir)
    check_heldout(run)
    if schema is not None and settings.unfolded and needs_front(schema):
        raise ExportError(
            f"{settings.run_dir}: --unfolded keeps the network as trained on design inputs, but "
            "this run's model takes raw columns (schema.json); export it folded"
        )
    model, tolerance = build_model(run, unfolded=settings.unfolded, schema=schema)
    checks = _checks(run, schema)
    layers = check_layers(model, run.params, run.meta, checks.design, checks.feeds)
    if not layers.passed:
        raise ExportError(layer_failure(settings.run_dir, layers, checks.heldout_count))
    expected = predict(run.params, run.meta, checks.design.astype(np.float32).astype(np.float64))
    session = onnx_session(model.SerializeToString())  # the float32 model as served
    if checks.feeds is None:
        outputs = score_onnx(session, checks.design)
    else:
        outputs = score_feeds(session, checks.feeds)
    verification = compare_outputs(outputs, expected, run.meta["task"], tolerance)
    if not verification.passed:
        raise ExportError(
            verification_failure(settings.run_dir, verification, checks.heldout_count)
        )
    params = {name: np.asarray(value, dtype=np.float64) for name, value in run.params.items()}
    preactivation = UNFOLDED_PREACTIVATION if settings.unfolded else FOLDED_PREACTIVATION
    hidden = len(run.config.hidden)
    if schema is None:
        rows = training_rows(run)
        drift = drift_metadata(rows, params, hidden, preactivation)
        references = reference_rows(run, settings.reference_rows)
    else:
        assert checks.schema_rows is not None
        found = checks.schema_rows
        rows = TrainingRows(found.training.numeric, found.training_source, found.note)
        drift = schema_drift_metadata(
            found.training, found.training_source, schema, params, hidden, preactivation
        )
        references = schema_reference_rows(
            run, schema, checks.schema_rows.heldout, settings.reference_rows
        )
    metadata = build_metadata(
        meta=run.meta,
        training=training_summary(run),
        folded=not settings.unfolded,
        fold_max_abs_error=verification.max_abs_error,
        tolerance=tolerance,
        references=references,
        model=model,
        drift=drift,
        schema=None if schema is None else schema_metadata(schema),
        feature_names=None if schema is None else input_names(schema),
    )
    attach_metadata(model, metadata)
    payload = write_model(settings.out, model)
    return ExportReport(
        out=settings.out,
        folded=not settings.unfolded,
        verification=verification,
        layers=layers,
        node_count=len(model.graph.node),
        size_bytes=len(payload),
        graph_sha256=graph_sha256(model),
        drift_rows=rows,
        checked=checks.described,
    )


@dataclass(frozen=True)
class _Checks:
    """The rows the fold is checked on: design inputs (P, D) for the numpy path and, for a
    graph of raw columns, the same records as its inputs."""

    design: np.ndarray
    feeds: dict[str, np.ndarray] | None
    heldout_count: int  # the first rows are held-out ones
    described: str  # what the rows are, for the report
    schema_rows: SchemaRows | None = None


def _checks(run: Run, schema: TableSchema | None) -> _Checks:
    if schema is None:
        probe = probe_rows(run.heldout_x)  # held-out rows, then rows at the edges of their range
        count = run.heldout_x.shape[0]
        return _Checks(
            probe,
            None,
            count,
            f"{count} held-out examples and {EDGE_ROWS} at the edges of their range",
        )
    found = schema_rows(run, schema)
    parts = [found.heldout]
    if needs_front(schema):  # missing cells and levels only mean something to such a graph
        parts += [special_rows(schema), edge_rows(schema, found.heldout)]
    records = RawRows.concat(parts)
    count = len(found.heldout)
    extra = len(records) - count
    described = f"{count} {found.heldout_source}" + (f" ({found.note})" if found.note else "")
    if extra and is_mixed(schema):
        described += (
            f" and {extra} more (every cell missing, every level unseen, every level of every "
            "column, numbers at the edges of their range)"
        )
    elif extra:
        described += f" and {extra} more (every cell missing, numbers at the edges of their range)"
    return _Checks(design_of(schema, records), feeds_of(schema, records), count, described, found)


def write_model(out: Path, model: onnx.ModelProto) -> bytes:
    """Check the finished model and write it to out atomically; returns the bytes written.
    ExportError in one line when it cannot be written (no partial file is left)."""
    onnx.checker.check_model(model, full_check=True)
    payload: bytes = model.SerializeToString()
    try:
        write_bytes(out, payload)
    except OSError as error:  # a full disk, most likely
        then = "make room or choose another --out" if disk_full(error) else "choose another --out"
        raise ExportError(
            f"{out}: cannot write the model, {os_error_line(error)}; nothing was "
            f"written (no partial file); {then}, then run it again"
        ) from None
    return payload


def check_output_path(out: Path, force: bool) -> None:
    """Refuse a directory, or an existing file without force, before any work is done."""
    if out.is_dir():
        raise ExportError(f"{out}: is a directory; --out needs a file name such as model.onnx")
    if out.exists() and not force:
        raise ExportError(f"{out}: already exists; pass --force to replace it")


def build_model(
    run: Run, *, unfolded: bool, schema: TableSchema | None = None
) -> tuple[onnx.ModelProto, Tolerance]:
    """Check run's parameters against its config, then build the folded (or unfolded) model,
    without metadata; also returns the tolerance its outputs are verified with. With a schema
    that needs it (export/columns.py), the folded graph takes raw columns."""
    spec = checked_spec(run)
    params = {name: np.asarray(value, dtype=np.float64) for name, value in run.params.items()}
    if unfolded:
        model = build_unfolded_model(params, spec)
    elif schema is not None and needs_front(schema):
        network = fold_params(params, spec)
        model = build_folded_model(network, front=ColumnFront(schema, network.input_clip))
    else:
        model = build_folded_model(fold_params(params, spec))
    if spec.task == "classification":
        return model, PROBABILITY_TOLERANCE
    return model, regression_tolerance(
        params["target.std"], params["target.mean"], spec.target_transform
    )


def checked_spec(run: Run) -> NetworkSpec:
    """The network run's meta and config describe, with its parameters checked against it;
    ExportError names the run, the file and the problem."""
    try:
        spec = spec_from_run(run.meta, run.config)
        check_params(run.params, spec)
    except ExportError as error:
        # the checks name the file within the run ("params.npz: …"); say which run it is
        raise ExportError(f"{run.path}{os.sep}{error}") from None
    return spec


def run_schema(run_dir: Path) -> TableSchema | None:
    """The run's schema.json, or None for a table of numbers without gaps with nothing left out
    (no file, or "plain"): x as it is, a format-1 model."""
    schema_path = run_dir / "schema.json"
    if not schema_path.is_file():
        return None
    try:
        schema = TableSchema.from_dict(read_json(schema_path))
    except (RunError, ValueError, KeyError, TypeError) as error:
        raise ExportError(f"{schema_path}: not a readable schema ({error})") from None
    return None if schema.plain else schema


def check_heldout(run: Run) -> None:
    """The held-out features are what the model is verified on: there must be some, all finite."""
    where = run.path / "heldout.npz"
    if run.heldout_x.shape[0] == 0:
        raise ExportError(f"{where}: 'x' has no rows; nothing to verify the model against")
    bad = np.argwhere(~np.isfinite(run.heldout_x))
    if bad.size:
        row, column = (int(i) for i in bad[0])
        raise ExportError(
            f"{where}: 'x' row {row}, column {column} is {run.heldout_x[row, column]} (not finite)"
        )


def _probe_row(row: int, heldout_count: int) -> str:
    return f"held-out row {row}" if row < heldout_count else f"edge row {row - heldout_count}"


def verification_failure(run_dir: Path, verification: Verification, heldout_count: int) -> str:
    return (
        f"{run_dir}: the ONNX model does not reproduce the numpy inference path on the held-out "
        f"set: max abs error {verification.max_abs_error:.3g}, {verification.failures} value(s) "
        f"outside |Δ| ≤ {verification.tolerance.abs:g} + {verification.tolerance.rel:g}·|y| "
        f"(worst at {_probe_row(verification.worst_example, heldout_count)}), "
        f"{verification.label_mismatches} label(s) differ; nothing written"
    )


def layer_failure(run_dir: Path, layers: LayerVerification, heldout_count: int) -> str:
    where = _probe_row(layers.worst_row, heldout_count)
    return (
        f"{run_dir}: the ONNX graph's {layers.worst_layer} pre-activations differ from the run's "
        f"by {layers.worst_ratio:.3g} float32 roundings of their summed terms at {where}, more "
        f"than the {layers.bound:g} rounding alone explains: the fold is wrong; nothing written"
    )


def schema_reference_rows(
    run: Run, schema: TableSchema, heldout: RawRows, count: int
) -> ReferenceRows:
    """`count` raw held-out records spread over the set, then (for a graph of raw columns) a
    record with every cell missing, one with every level unseen and records covering every
    kept level of every column; with the numpy inference path's outputs on them."""
    indices = np.unique(np.linspace(0, len(heldout) - 1, min(count, len(heldout))).astype(int))
    parts = [heldout.take(indices)]
    if needs_front(schema):
        parts.append(special_rows(schema))
    records = RawRows.concat(parts)
    design = design_of(schema, records)
    outputs = predict(run.params, run.meta, design)
    raw = reference_json(schema, records)
    if run.meta["task"] == "classification":
        return ReferenceRows(
            design, {"probabilities": outputs, "label": np.argmax(outputs, axis=1)}, raw
        )
    return ReferenceRows(design, {"y": outputs}, raw)


def reference_rows(run: Run, count: int) -> ReferenceRows:
    """`count` held-out rows spread over the set, rounded to float32 as the model sees them,
    with the numpy inference path's float64 outputs on exactly those values."""
    heldout = np.asarray(run.heldout_x, dtype=np.float64)
    indices = np.unique(
        np.linspace(0, heldout.shape[0] - 1, min(count, heldout.shape[0])).astype(int)
    )
    inputs = heldout[indices].astype(np.float32)
    outputs = predict(run.params, run.meta, inputs.astype(np.float64))
    if run.meta["task"] == "classification":
        return ReferenceRows(
            inputs, {"probabilities": outputs, "label": np.argmax(outputs, axis=1)}
        )
    return ReferenceRows(inputs, {"y": outputs})


def training_summary(run: Run) -> dict[str, Any]:
    metric_keys = ("test_accuracy", "test_rmse", "dev_error", "created_at")
    return {
        "config": run.config.to_dict(),
        "metrics": {key: run.meta[key] for key in metric_keys if key in run.meta},
    }
