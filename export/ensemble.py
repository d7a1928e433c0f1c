"""Export k training runs as ONE verified ONNX model of their mean (`bnserve export R1 R2 …`).

Each member is checked and folded as `bnserve export` folds one run, and its fold is checked
layer by layer as one run's is (`verify.check_layers` on its own folded graph, which the ensemble
graph holds weight for weight). The ensemble graph (export/ensemble_graph.py) must then reproduce
the mean of the members' numpy inference paths — probabilities (label = argmax of the mean) or y
— within the fold tolerance on every member's held-out rows plus rows at the edges of their
range (members trained on raw columns: on raw records, export/ensemble_columns.py). Nothing is
written unless every check passed; the file appears atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bnserve.export.columns import input_names, schema_metadata
from bnserve.export.distribution import TrainingRows, layer_statistics, training_rows
from bnserve.export.distribution import drift_metadata as one_model_drift
from bnserve.export.ensemble_columns import (
    RawProbe,
    check_same_inputs,
    member_design,
    raw_drift_features,
    raw_mean_prediction,
    raw_probe,
    raw_reference_rows,
)
from bnserve.export.ensemble_front import merged_front
from bnserve.export.ensemble_graph import (
    DEFAULT_LAYOUT,
    MEMBER_PREACTIVATION,
    STACKED_PREACTIVATION,
    WIDE_PREACTIVATION,
    build_ensemble_model,
    layout_problem,
    resolve_layout,
)
from bnserve.export.errors import ExportError
from bnserve.export.exporter import (
    build_model,
    check_heldout,
    check_output_path,
    checked_spec,
    layer_failure,
    run_schema,
    training_summary,
    verification_failure,
    write_model,
)
from bnserve.export.fold import FoldedNetwork, fold_params
from bnserve.export.graph import build_folded_model
from bnserve.export.metadata import ReferenceRows, attach_metadata, build_metadata, graph_sha256
from bnserve.export.raw_rows import feeds_of
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
from bnserve.server.modelfile.contract import MetadataKey, Tolerance
from bnserve.training.data.schema import TableSchema
from bnserve.training.errors import RunError
from bnserve.training.inference import predict
from bnserve.training.rundir import Run, load_run
from bnserve.training.target_transform import transform_of


@dataclass(frozen=True)
class EnsembleSettings:
    """What `bnserve export` was asked to do with several runs."""

    run_dirs: tuple[Path, ...]  # finished training runs, k ≥ 2, in member order
    out: Path
    force: bool = False
    reference_rows: int = 8  # rows of the first member's held-out set embedded for the gate
    source: str = ""  # how the members were chosen (a tune directory), for the card
    layout: str = DEFAULT_LAYOUT  # AUTO or one of LAYOUTS


@dataclass(frozen=True)
class EnsembleReport:
    """What was written and how well it matched the mean of the members' numpy paths."""

    out: Path
    members: tuple[str, ...]  # run ids, in member order
    layout: str  # the one built (AUTO resolved)
    verification: Verification
    worst_layer_ratio: float  # over every member's layers (float32 roundings, verify.py)
    layer_bound: float
    node_count: int
    size_bytes: int
    graph_sha256: str
    drift_rows: TrainingRows
    checked: str  # the rows the mean was checked on, for the report


def export_ensemble(settings: EnsembleSettings) -> EnsembleReport:
    """Export the mean of settings.run_dirs to settings.out; ExportError on bad input."""
    check_output_path(settings.out, settings.force)
    if len(settings.run_dirs) < 2:
        raise ExportError("an ensemble needs at least 2 runs")
    runs = [_load_member(path) for path in settings.run_dirs]
    schemas = [run_schema(run.path) for run in runs]
    specs = [checked_spec(run) for run in runs]  # meta, config and parameters, each run's
    check_compatible(runs, schemas)
    check_same_scaling(runs, schemas)
    member_schemas = [schema for schema in schemas if schema is not None]  # all, or none
    probe = _Probe.of(runs, member_schemas)
    networks: list[FoldedNetwork] = []
    worst_ratio, bound = 0.0, 0.0
    for run, spec, schema in zip(runs, specs, schemas, strict=True):
        network = fold_params(run.params, spec)
        layers = probe.check_member(run, network, schema)
        if not layers.passed:
            raise ExportError(layer_failure(run.path, layers, probe.heldout_count))
        worst_ratio, bound = max(worst_ratio, layers.worst_ratio), layers.bound
        networks.append(network)
    layout = resolve_layout(networks, settings.layout)
    problem = layout_problem(networks, layout)
    if problem is not None:
        raise ExportError(f"--layout {settings.layout}: {problem}")
    front, front_layer = None, None
    if member_schemas:
        front, front_layer = merged_front(member_schemas, [n.layers[0] for n in networks])
    model = build_ensemble_model(networks, layout=layout, front=front, front_layer=front_layer)
    task = runs[0].meta["task"]
    tolerance = _tolerance(runs)
    expected, outputs = probe.expected_and_served(runs, model)
    verification = compare_outputs(outputs, expected, task, tolerance)
    if not verification.passed:
        where = Path(", ".join(str(run.path) for run in runs))
        raise ExportError(verification_failure(where, verification, probe.heldout_count))
    drift, rows, references = probe.card_parts(runs, settings.reference_rows)
    drift["layers"] = member_layers(runs, layout)
    schema = member_schemas[0] if member_schemas else None
    metadata = build_metadata(
        meta=_card_meta(runs),
        training={"members": [training_summary(run) for run in runs]},
        folded=True,
        fold_max_abs_error=verification.max_abs_error,
        tolerance=tolerance,
        references=references,
        model=model,
        drift=drift,
        schema=None if schema is None else schema_metadata(schema),
        feature_names=None if schema is None else input_names(schema),
    )
    metadata[MetadataKey.ENSEMBLE.full] = json.dumps(
        {
            "layout": layout,
            "source": settings.source or "runs given",
            "members": [
                {
                    "run_id": run.meta["run_id"],
                    "params_sha256": run.meta["params_sha256"],
                    "run_dir": str(run.path),
                }
                for run in runs
            ],
        }
    )
    attach_metadata(model, metadata)
    payload = write_model(settings.out, model)
    return EnsembleReport(
        out=settings.out,
        members=tuple(str(run.meta["run_id"]) for run in runs),
        layout=layout,
        verification=verification,
        worst_layer_ratio=worst_ratio,
        layer_bound=bound,
        node_count=len(model.graph.node),
        size_bytes=len(payload),
        graph_sha256=graph_sha256(model),
        drift_rows=rows,
        checked=probe.described,
    )


@dataclass(frozen=True)
class _Probe:
    """What the ensemble is checked on: members' rows of numbers in x (`rows`), or raw records
    (`raw`, members with a schema each, in `schemas`)."""

    heldout_count: int  # the first rows are held-out ones
    described: str  # what the rows are, for the report
    rows: np.ndarray | None = None  # (P, F)
    raw: RawProbe | None = None
    schemas: tuple[TableSchema, ...] = ()

    @staticmethod
    def of(runs: Sequence[Run], schemas: Sequence[TableSchema]) -> _Probe:
        if schemas:
            raw = raw_probe(runs, schemas)
            extra = len(raw.records) - raw.heldout_count
            described = (
                f"{raw.heldout_count} held-out records of the members and {extra} more (each "
                "member's: every cell missing, every level unseen, every level of every column, "
                "numbers at the edges of their range)"
            )
            return _Probe(raw.heldout_count, described, raw=raw, schemas=tuple(schemas))
        heldout = _heldout_union(runs)
        described = (
            f"{heldout.shape[0]} held-out examples and {EDGE_ROWS} at the edges of their range"
        )
        # every member's held-out rows, then rows at their edges
        return _Probe(heldout.shape[0], described, rows=probe_rows(heldout))

    def check_member(
        self, run: Run, network: FoldedNetwork, schema: TableSchema | None
    ) -> LayerVerification:
        """The member's fold, layer by layer, on its own folded graph, as one run's export."""
        if self.raw is None or schema is None:
            assert self.rows is not None
            return check_layers(build_folded_model(network), run.params, run.meta, self.rows)
        model, _ = build_model(run, unfolded=False, schema=schema)
        records = self.raw.records
        design, feeds = member_design(schema, records), feeds_of(schema, records)
        return check_layers(model, run.params, run.meta, design, feeds)

    def expected_and_served(
        self, runs: Sequence[Run], model: onnx.ModelProto
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The mean of the members' numpy paths, and the graph's outputs under onnxruntime."""
        session = onnx_session(model.SerializeToString())
        if self.raw is None:
            assert self.rows is not None
            rows = self.rows.astype(np.float32).astype(np.float64)
            return mean_prediction(runs, rows), score_onnx(session, self.rows)
        records = self.raw.records
        expected = raw_mean_prediction(runs, self.schemas, records)
        return expected, score_feeds(session, feeds_of(self.schemas[0], records))

    def card_parts(
        self, runs: Sequence[Run], reference_count: int
    ) -> tuple[dict[str, Any], TrainingRows, ReferenceRows]:
        """`bnserve.drift` without layers (the first member's features), the rows it describes,
        and the reference rows with the mean of the members' outputs."""
        if self.raw is None:
            rows = training_rows(runs[0])
            first = {name: np.asarray(v, dtype=np.float64) for name, v in runs[0].params.items()}
            drift = one_model_drift(rows, first, 0, "")  # the features; no layers of its own
            return drift, rows, reference_rows(runs, reference_count)
        drift, rows = raw_drift_features(self.raw, self.schemas[0], runs[0])
        references = raw_reference_rows(runs, self.schemas, self.raw, reference_count)
        return drift, rows, references


def _load_member(path: Path) -> Run:
    try:
        run = load_run(path)
    except RunError as error:
        raise ExportError(f"not an exportable run: {error}") from None
    check_heldout(run)
    if transform_of(run.meta) != "none":  # the mean node would average t, not y
        raise ExportError(
            f"{path}: its target is transformed ({transform_of(run.meta)}): an ensemble averages "
            "the members' last layers, so its members must answer in the target's units without one"
        )
    return run


def check_same_scaling(runs: Sequence[Run], schemas: Sequence[TableSchema | None]) -> None:
    """Robust scaling's clip (--input-scaling robust) sits before the members' one first Gemm,
    so members must all be standard-scaled, or all robust with the same median, scale and clip
    (runs of one training split) on a table of numbers; ExportError names the first that is not.
    """
    first = runs[0]
    robust = "input.clip" in first.params
    for run in runs:
        if ("input.clip" in run.params) != robust:
            raise ExportError(
                f"{run.path}: its input scaling differs from {first.path}'s (robust and clipped, "
                "or standard); ensemble members share their first layer's input, so one scaling"
            )
        if not robust:
            continue
        if schemas[0] is not None:
            raise ExportError(
                f"{run.path}: robust-scaled members trained on raw columns (schema.json) cannot "
                "share one front yet; ensemble standard-scaled runs of this table"
            )
        same = all(
            np.array_equal(run.params[key], first.params[key])
            for key in ("input.mean", "input.std", "input.clip")
        )
        if not same:
            raise ExportError(
                f"{run.path}: its robust scaling (median, quartile scale) differs from "
                f"{first.path}'s (other training rows, e.g. another fold); the clip before the "
                "members' one first Gemm needs the same one"
            )


def check_compatible(runs: Sequence[Run], schemas: Sequence[TableSchema | None]) -> None:
    """Members must share task, class (or target) names and their inputs: feature names, or
    with schemas the graph inputs (each member's design inputs differ with its vocabularies).
    ExportError names the first member that differs from the first one and how."""
    check_same_inputs(runs, schemas)
    first = runs[0]
    for run in runs[1:]:
        if run.meta["task"] != first.meta["task"]:
            raise ExportError(
                f"{run.path}: task is {run.meta['task']}, but {first.path} is "
                f"{first.meta['task']}; ensemble members must share the task"
            )
        names_key = "class_names" if first.meta["task"] == "classification" else "target_names"
        keys = [names_key] if schemas[0] is not None else ["feature_names", names_key]
        for key in keys:
            what = key.replace("_", " ")
            difference = _name_difference(list(first.meta[key]), list(run.meta[key]))
            if difference:
                raise ExportError(
                    f"{run.path}: its {what} differ from {first.path}'s ({difference}); "
                    "ensemble members must share them, in the same order"
                )


def _name_difference(expected: list[str], actual: list[str]) -> str:
    if len(expected) != len(actual):
        return f"{len(actual)} names, not {len(expected)}"
    for index, (want, have) in enumerate(zip(expected, actual, strict=True)):
        if want != have:
            return f"name #{index} is {have!r}, not {want!r}"
    return ""


def _heldout_union(runs: Sequence[Run]) -> np.ndarray:
    """Every member's held-out rows, each distinct row once (first appearance order)."""
    rows = np.vstack([np.asarray(run.heldout_x, dtype=np.float64) for run in runs])
    _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]


def mean_prediction(runs: Sequence[Run], x: np.ndarray) -> np.ndarray:
    """The mean of the members' numpy inference paths on x (N, F) float64: probabilities (N, C)
    or y (N, T)."""
    mean: np.ndarray = np.mean([predict(run.params, run.meta, x) for run in runs], axis=0)
    return mean


def _tolerance(runs: Sequence[Run]) -> Tolerance:
    if runs[0].meta["task"] == "classification":
        return PROBABILITY_TOLERANCE
    stds = np.concatenate([np.asarray(run.params["target.std"]) for run in runs])
    return regression_tolerance(stds)


def reference_rows(runs: Sequence[Run], count: int) -> ReferenceRows:
    """`count` rows spread over the first member's held-out set, as float32, with the mean of
    the members' float64 numpy outputs on exactly those values."""
    heldout = np.asarray(runs[0].heldout_x, dtype=np.float64)
    indices = np.unique(
        np.linspace(0, heldout.shape[0] - 1, min(count, heldout.shape[0])).astype(int)
    )
    inputs = heldout[indices].astype(np.float32)
    outputs = mean_prediction(runs, inputs.astype(np.float64))
    if runs[0].meta["task"] == "classification":
        return ReferenceRows(
            inputs, {"probabilities": outputs, "label": np.argmax(outputs, axis=1)}
        )
    return ReferenceRows(inputs, {"y": outputs})


def _joined(runs: Sequence[Run], key: str) -> str:
    """One value when every member states the same, else each member's, comma-separated."""
    values = [str(run.meta[key]) for run in runs]
    return values[0] if len(set(values)) == 1 else ",".join(values)


def _card_meta(runs: Sequence[Run]) -> dict[str, Any]:
    """The meta build_metadata reads, for the ensemble: names and task from the first member
    (all share them); run_id `ensemble-` + 12 hex digits of params_sha256, which is the sha256
    of the members' params_sha256 values joined by newlines, in member order."""
    first = runs[0].meta
    digest = hashlib.sha256("\n".join(run.meta["params_sha256"] for run in runs).encode())
    batchnorm = [run for run in runs if run.meta["batchnorm"]]
    epsilons = sorted({float(run.meta["epsilon"]) for run in batchnorm})
    meta = {key: first[key] for key in ("task", "feature_names")}
    names_key = "class_names" if first["task"] == "classification" else "target_names"
    meta[names_key] = first[names_key]
    meta.update(
        stats=_joined(runs, "stats"),
        batchnorm=bool(batchnorm),
        bn_momentum=_joined(batchnorm, "bn_momentum") if batchnorm else "",
        running_var=_joined(runs, "running_var"),
        epsilon=epsilons[0] if len(epsilons) == 1 else epsilons,
        run_id=f"ensemble-{digest.hexdigest()[:12]}",
        params_sha256=digest.hexdigest(),
    )
    return meta


def member_layers(runs: Sequence[Run], layout: str) -> list[dict[str, Any]]:
    """`bnserve.drift` "layers" of the ensemble: every member's batch-normed hidden layers,
    named `m{k}.hidden{i}`, which the server's drift monitor reads as it reads one model's
    layers: in parallel branches from the tensor `m{k}.hidden{i}.z` [N, H]; batched, from the
    stack `hidden{i}.z` [k, N, H] at `member` k − 1 (a view of it, no node per member);
    grouped and blockdiag, from the members' side-by-side `hidden{i}.z` [N, Σ H(, 1)] at
    `offset` (the earlier members' widths of layer i: a view of its columns). The features are
    the first member's (its training split and standardization)."""
    layers: list[dict[str, Any]] = []
    for k, run in enumerate(runs, start=1):
        params = {name: np.asarray(v, dtype=np.float64) for name, v in run.params.items()}
        name = {
            "parallel": MEMBER_PREACTIVATION.replace("{k}", str(k)),
            "batched": STACKED_PREACTIVATION,
        }.get(layout, WIDE_PREACTIVATION)
        for index, entry in enumerate(layer_statistics(params, len(run.config.hidden), name)):
            where: dict[str, int] = {}
            if layout == "batched":
                where = {"member": k - 1}
            elif layout != "parallel":
                where = {"offset": sum(earlier.config.hidden[index] for earlier in runs[: k - 1])}
            layers.append({**entry, "name": f"m{k}.{entry['name']}", **where})
    return layers
