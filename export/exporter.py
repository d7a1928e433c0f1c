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
from bnserve.export.distribution import TrainingRows, drift_metadata, training_rows
from bnserve.export.errors import ExportError
from bnserve.export.fold import fold_params
from bnserve.export.graph import (
    FOLDED_PREACTIVATION,
    UNFOLDED_PREACTIVATION,
    build_folded_model,
    build_unfolded_model,
)
from bnserve.export.metadata import ReferenceRows, attach_metadata, build_metadata, graph_sha256
from bnserve.export.network import check_params, spec_from_run
from bnserve.export.verify import (
    PROBABILITY_TOLERANCE,
    LayerVerification,
    Verification,
    check_layers,
    compare_outputs,
    onnx_session,
    probe_rows,
    regression_tolerance,
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


def export_run(settings: ExportSettings) -> ExportReport:
    """Export settings.run_dir to settings.out; on bad input raise ExportError, write nothing."""
    check_output_path(settings.out, settings.force)
    try:
        run = load_run(settings.run_dir)
    except RunError as error:
        raise ExportError(f"not an exportable run: {error}") from None
    _check_plain_inputs(settings.run_dir)
    _check_heldout(run)
    model, tolerance = build_model(run, unfolded=settings.unfolded)
    probe = probe_rows(run.heldout_x)  # held-out rows, then rows at the edges of their range
    heldout_count = run.heldout_x.shape[0]
    layers = check_layers(model, run.params, run.meta, probe)  # the fold, layer by layer
    if not layers.passed:
        raise ExportError(_layer_failure(settings.run_dir, layers, heldout_count))
    expected = predict(run.params, run.meta, probe.astype(np.float32).astype(np.float64))
    session = onnx_session(model.SerializeToString())  # the float32 model as served
    outputs = score_onnx(session, probe)
    verification = compare_outputs(outputs, expected, run.meta["task"], tolerance)
    if not verification.passed:
        raise ExportError(_verification_failure(settings.run_dir, verification, heldout_count))
    rows = training_rows(run)
    params = {name: np.asarray(value, dtype=np.float64) for name, value in run.params.items()}
    drift = drift_metadata(
        rows,
        params,
        len(run.config.hidden),
        UNFOLDED_PREACTIVATION if settings.unfolded else FOLDED_PREACTIVATION,
    )
    metadata = build_metadata(
        meta=run.meta,
        training=_training_summary(run),
        folded=not settings.unfolded,
        fold_max_abs_error=verification.max_abs_error,
        tolerance=tolerance,
        references=reference_rows(run, settings.reference_rows),
        model=model,
        drift=drift,
    )
    attach_metadata(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    payload = model.SerializeToString()
    try:
        write_bytes(settings.out, payload)
    except OSError as error:  # a full disk, most likely
        then = "make room or choose another --out" if disk_full(error) else "choose another --out"
        raise ExportError(
            f"{settings.out}: cannot write the model, {os_error_line(error)}; nothing was "
            f"written (no partial file); {then}, then run it again"
        ) from None
    return ExportReport(
        out=settings.out,
        folded=not settings.unfolded,
        verification=verification,
        layers=layers,
        node_count=len(model.graph.node),
        size_bytes=len(payload),
        graph_sha256=graph_sha256(model),
        drift_rows=rows,
    )


def check_output_path(out: Path, force: bool) -> None:
    """Refuse a directory, or an existing file without force, before any work is done."""
    if out.is_dir():
        raise ExportError(f"{out}: is a directory; --out needs a file name such as model.onnx")
    if out.exists() and not force:
        raise ExportError(f"{out}: already exists; pass --force to replace it")


def build_model(run: Run, *, unfolded: bool) -> tuple[onnx.ModelProto, Tolerance]:
    """Check run's parameters against its config, then build the folded (or unfolded) model,
    without metadata; also returns the tolerance its outputs are verified with."""
    try:
        spec = spec_from_run(run.meta, run.config)
        check_params(run.params, spec)
    except ExportError as error:
        # the checks name the file within the run ("params.npz: …"); say which run it is
        raise ExportError(f"{run.path}{os.sep}{error}") from None
    params = {name: np.asarray(value, dtype=np.float64) for name, value in run.params.items()}
    if unfolded:
        model = build_unfolded_model(params, spec)
    else:
        model = build_folded_model(fold_params(params, spec))
    if spec.task == "classification":
        return model, PROBABILITY_TOLERANCE
    return model, regression_tolerance(
        params["target.std"], params["target.mean"], spec.target_transform
    )


def _check_plain_inputs(run_dir: Path) -> None:
    """Refuse a run whose inputs need preprocessing the graph does not hold yet (issue 26,
    phase 2: categorical lookups, fill values and missing indicators folded into the model)."""
    schema_path = run_dir / "schema.json"
    if not schema_path.is_file():
        return  # numbers only, no gaps: x is the input as it is
    schema = TableSchema.from_dict(read_json(schema_path))
    if not schema.needs_preprocessing:
        return  # numbers without gaps, some columns left out: the inputs are those columns
    kinds = sorted(
        {
            "categorical columns" if column.kind == "categorical" else "missing-value handling"
            for column in schema.columns
            if column.kind == "categorical"
            or (column.kind == "numeric" and column.fill is not None)
        }
    )
    raise ExportError(
        f"{run_dir}: the run has {' and '.join(kinds)} (schema.json), which bnserve export "
        "cannot fold into the model file yet; train on a table of numbers without gaps to export"
    )


def _check_heldout(run: Run) -> None:
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


def _verification_failure(run_dir: Path, verification: Verification, heldout_count: int) -> str:
    return (
        f"{run_dir}: the ONNX model does not reproduce the numpy inference path on the held-out "
        f"set: max abs error {verification.max_abs_error:.3g}, {verification.failures} value(s) "
        f"outside |Δ| ≤ {verification.tolerance.abs:g} + {verification.tolerance.rel:g}·|y| "
        f"(worst at {_probe_row(verification.worst_example, heldout_count)}), "
        f"{verification.label_mismatches} label(s) differ; nothing written"
    )


def _layer_failure(run_dir: Path, layers: LayerVerification, heldout_count: int) -> str:
    where = _probe_row(layers.worst_row, heldout_count)
    return (
        f"{run_dir}: the ONNX graph's {layers.worst_layer} pre-activations differ from the run's "
        f"by {layers.worst_ratio:.3g} float32 roundings of their summed terms at {where}, more "
        f"than the {layers.bound:g} rounding alone explains: the fold is wrong; nothing written"
    )


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


def _training_summary(run: Run) -> dict[str, Any]:
    metric_keys = ("test_accuracy", "test_rmse", "dev_error", "created_at")
    return {
        "config": run.config.to_dict(),
        "metrics": {key: run.meta[key] for key in metric_keys if key in run.meta},
    }
