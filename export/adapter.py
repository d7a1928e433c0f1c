"""`bnserve adapt`: re-estimate a folded model's batch-norm statistics on recent rows, re-fold,
verify like an export, write a new model file (docs/adapt.md).

Steps: read the model file (export/adapt_source.py) and the rows; refuse too few rows or no
drift; un-fold (export/adapt_network.py); re-estimate layer by layer; re-fold and build with the
exporter's code; check every layer against the numpy inference path of the adapted network and
the float32 model's outputs; new reference rows and drift reference from the recent rows;
provenance in `bnserve.adapt`; write atomically. Nothing is written unless every step passed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bnserve.atomic import write_bytes
from bnserve.export.adapt_network import (
    AdaptPlan,
    adapt_params,
    float32_exact,
    hidden_layers,
    layer_range,
    network_spec,
    recent_standardization,
    refold_error,
    restandardize,
    unfold,
)
from bnserve.export.adapt_source import AdaptError, SourceModel, read_source
from bnserve.export.distribution import TrainingRows, drift_metadata
from bnserve.export.fold import fold_params
from bnserve.export.graph import FOLDED_PREACTIVATION, build_folded_model
from bnserve.export.metadata import (
    ReferenceRows,
    attach_metadata,
    build_metadata,
    graph_sha256,
)
from bnserve.export.network import check_params
from bnserve.export.verify import (
    LayerVerification,
    Verification,
    check_layers,
    compare_outputs,
    onnx_session,
    probe_rows,
    score_onnx,
)
from bnserve.server.drift.cli import DriftInputError, drift_report, read_inputs
from bnserve.server.drift.monitor import DriftSettings, parse_reference
from bnserve.server.modelfile.contract import MetadataKey, output_names_key
from bnserve.server.modelfile.wire import with_graph_outputs
from bnserve.training.errors import disk_full, os_error_line
from bnserve.training.inference import predict

REFOLD_LIMIT = 1e-5  # relative |re-folded − source| beyond which the card does not fit the graph
VERIFY_ROWS = 2000  # recent rows (spread over the file) the adapted fold is checked on
DRIFT_SETTINGS = DriftSettings(window=1, min_examples=0)  # the server's thresholds, whole life
# A layer score (mean KL of z_norm from N(0, 1)) worth adapting to when no feature is flagged:
# five times the server's flag. On digits (bench/adapt.py, 1,000 rows) a 4:1 label shift, which
# adapting makes worse, reached 0.15 in 1 of 32 draws (0.07 otherwise) and no shift 0.035; the
# offsets and scalings started at 0.45.
LAYER_WORTH = 0.25


@dataclass(frozen=True)
class AdaptSettings:
    """What `bnserve adapt` was asked to do; defaults from bench/adapt.py (docs/adapt.md)."""

    source: Path  # the folded model file to adapt
    data: Path  # recent unlabelled inputs: .csv or .parquet (or .npz) naming the features
    out: Path  # the new model file; never replaced
    layers: str = "first"  # "first", "all" or a count K of hidden layers from the input
    prior_rows: float = 0.0  # pseudo-count of the source statistics in the blend (0: recent only)
    input_standardization: bool = True  # also re-estimate each feature's mean and std
    min_rows: int = 300  # refuse fewer recent rows
    force: bool = False  # adapt even when no feature or layer is past a drift threshold
    reference_rows: int = 8  # recent rows embedded for the server's parity gate


@dataclass(frozen=True)
class AdaptReport:
    """What was written, and the drift of the recent rows before and after."""

    out: Path
    rows: int
    plan: AdaptPlan
    before: dict[str, Any]  # server/drift/cli.py drift_report: the recent rows against the source
    after: dict[str, Any]  # the same rows against the adapted model and its new reference
    verification: Verification
    layers: LayerVerification
    graph_sha256: str


class NoShiftError(AdaptError):
    """The recent rows show no drift worth adapting to; carries the drift report."""

    def __init__(self, message: str, before: dict[str, Any]) -> None:
        super().__init__(message)
        self.before = before


def adapt_model(settings: AdaptSettings) -> AdaptReport:
    """Adapt settings.source to settings.data into settings.out; AdaptError on any refusal."""
    if settings.out.is_dir() or settings.out.exists():
        raise AdaptError(f"{settings.out}: already exists; choose a new name for the new version")
    source = read_source(settings.source)
    try:
        selected = hidden_layers(settings.layers, len(source.folded.batchnorm))
    except ValueError as error:
        raise AdaptError(str(error)) from None
    x = _recent_rows(settings, source)
    params = unfold(source.folded)
    mismatch = refold_error(source.folded, params)
    if not mismatch <= REFOLD_LIMIT:
        raise AdaptError(
            f"{settings.source}: its card's statistics do not re-fold into its graph (relative "
            f"error {mismatch:.3g} > {REFOLD_LIMIT:g}): the graph was changed after export"
        )
    before = drift_of(source.model, source.card.entries[MetadataKey.DRIFT], source, x)
    if not settings.force and not worth_adapting(before):
        raise NoShiftError(_no_shift(settings.data, before), before)
    n_hidden = len(source.folded.batchnorm)
    plan = AdaptPlan(
        layers=selected,
        prior_rows=settings.prior_rows,
        input_standardization=settings.input_standardization,
        unbiased=source.card.get(MetadataKey.RUNNING_VAR) != "biased",
    )
    spec = network_spec(source.folded)
    adapted = adapt_params(params, x, plan, activation=spec.activation, epsilon=spec.epsilon)
    if not settings.input_standardization:
        adapted = restandardize(adapted, *recent_standardization(x))
    adapted = float32_exact(adapted)
    check_params(adapted, spec)  # finite, positive variances: the exporter's own checks
    model = build_folded_model(fold_params(adapted, spec))
    meta = _meta(source, spec.activation)
    verification, layer_check = _verify(model, adapted, meta, x, source)
    drift = drift_metadata(
        TrainingRows(x, "recent rows", ""), adapted, n_hidden, FOLDED_PREACTIVATION
    )
    drift_text = json.dumps(drift, separators=(",", ":"))
    after = drift_of(model, drift_text, source, x)
    metadata = build_metadata(
        meta=meta,
        training=json.loads(source.card.get(MetadataKey.TRAINING) or "{}"),
        folded=True,
        fold_max_abs_error=verification.max_abs_error,
        tolerance=source.card.tolerance,
        references=_reference_rows(adapted, meta, x, settings.reference_rows),
        model=model,
        drift=drift,
    )
    provenance = _provenance(source, settings, plan, x.shape[0], before, after)
    metadata[MetadataKey.ADAPT.full] = json.dumps(provenance, separators=(",", ":"))
    attach_metadata(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    _write(settings.out, model.SerializeToString())
    return AdaptReport(
        out=settings.out,
        rows=x.shape[0],
        plan=plan,
        before=before,
        after=after,
        verification=verification,
        layers=layer_check,
        graph_sha256=graph_sha256(model),
    )


def _recent_rows(settings: AdaptSettings, source: SourceModel) -> np.ndarray:
    """The model's features from settings.data, (N, F) float64; AdaptError when unusable."""
    if settings.data.is_dir():
        raise AdaptError(
            f"{settings.data}: a directory; a server capture directory is not read yet (it comes "
            "with the feedback work): give its rows as a CSV or Parquet file"
        )
    try:
        x = read_inputs(settings.data, source.card.feature_names).astype(np.float64)
    except DriftInputError as error:
        raise AdaptError(str(error)) from None
    except OSError as error:
        raise AdaptError(f"{settings.data}: cannot read it ({error.strerror})") from None
    if x.shape[0] < settings.min_rows:
        raise AdaptError(
            f"{settings.data}: {x.shape[0]} rows, fewer than --min-rows {settings.min_rows}: "
            "too few to re-estimate the statistics; collect more rows"
        )
    return x


def _no_shift(data: Path, before: dict[str, Any]) -> str:
    worst = max(before["layers"], key=lambda layer: layer["score"])
    return (
        f"{data}: no feature past the server's drift thresholds and no layer score above "
        f"{LAYER_WORTH:g} (largest: {worst['name']} {worst['score']:.3f}): no shift worth "
        "adapting; pass --force to adapt anyway"
    )


def worth_adapting(before: dict[str, Any]) -> bool:
    """A drift report shows a shift worth adapting to: a feature flagged by the server's
    thresholds, or a hidden layer scoring above LAYER_WORTH."""
    layer_scores = [layer["score"] for layer in before["layers"]]
    return bool(before["flagged_features"]) or max(layer_scores, default=0.0) > LAYER_WORTH


def drift_of(
    model: onnx.ModelProto, drift_text: str, source: SourceModel, x: np.ndarray
) -> dict[str, Any]:
    """The server's whole-life drift figures for rows x (N, F) against a graph and reference."""
    reference = parse_reference(drift_text, source.card.feature_names)
    outputs = [(layer.output, layer.width) for layer in reference.layers]
    session = ort.InferenceSession(
        with_graph_outputs(model.SerializeToString(), outputs),
        providers=["CPUExecutionProvider"],
    )
    return drift_report(session, reference, x.astype(np.float32), DRIFT_SETTINGS)


def _meta(source: SourceModel, activation: str) -> dict[str, Any]:
    """The run facts build_metadata, predict and check_layers read, from the source's card."""
    card = source.card
    names_key = output_names_key(card.task)
    return {
        "task": card.task,
        "activation": activation,
        "batchnorm": True,
        "epsilon": source.folded.batchnorm[0].epsilon,
        "feature_names": list(card.feature_names),
        names_key.value: list(card.class_names or card.target_names),
        "stats": card.get(MetadataKey.STATS),
        "bn_momentum": card.get(MetadataKey.BN_MOMENTUM),
        "running_var": card.get(MetadataKey.RUNNING_VAR),
        "run_id": card.get(MetadataKey.RUN_ID),
        "params_sha256": card.get(MetadataKey.PARAMS_SHA256),
    }


def _verify(
    model: onnx.ModelProto,
    params: dict[str, np.ndarray],
    meta: dict[str, Any],
    x: np.ndarray,
    source: SourceModel,
) -> tuple[Verification, LayerVerification]:
    """The exporter's two checks on up to VERIFY_ROWS recent rows plus edge rows."""
    probe = probe_rows(x[_spread(x.shape[0], VERIFY_ROWS)])
    layers = check_layers(model, params, meta, probe)
    if not layers.passed:
        raise AdaptError(
            f"{source.path}: the adapted graph's {layers.worst_layer} pre-activations differ "
            f"from the numpy adapted network's by {layers.worst_ratio:.3g} float32 roundings "
            f"(bound {layers.bound:g}): the re-fold is wrong; nothing written"
        )
    expected = predict(params, meta, probe.astype(np.float32).astype(np.float64))
    outputs = score_onnx(onnx_session(model.SerializeToString()), probe)
    verification = compare_outputs(outputs, expected, meta["task"], source.card.tolerance)
    if not verification.passed:
        raise AdaptError(
            f"{source.path}: the adapted model does not reproduce the numpy adapted network: "
            f"max abs error {verification.max_abs_error:.3g}, {verification.failures} value(s) "
            f"outside the tolerance, {verification.label_mismatches} label(s) differ"
        )
    return verification, layers


def _spread(rows: int, count: int) -> np.ndarray:
    """Up to count row indices spread evenly over 0..rows−1."""
    return np.unique(np.linspace(0, rows - 1, min(count, rows)).astype(int))


def _reference_rows(
    params: dict[str, np.ndarray], meta: dict[str, Any], x: np.ndarray, count: int
) -> ReferenceRows:
    """count recent rows spread over the file, with the adapted network's float64 outputs."""
    inputs = x[_spread(x.shape[0], count)].astype(np.float32)
    outputs = predict(params, meta, inputs.astype(np.float64))
    if meta["task"] == "classification":
        return ReferenceRows(inputs, {"probabilities": outputs, "label": np.argmax(outputs, 1)})
    return ReferenceRows(inputs, {"y": outputs})


def drift_summary(report: dict[str, Any], top: int = 5) -> dict[str, Any]:
    """The card's short form of a drift report: counts, the worst features, every layer."""
    worst = sorted(report["features"], key=lambda feature: -feature["score"])[:top]
    return {
        "features_flagged": len(report["flagged_features"]),
        "worst_features": {feature["name"]: round(feature["score"], 4) for feature in worst},
        "layers": {layer["name"]: round(layer["score"], 5) for layer in report["layers"]},
    }


def _provenance(
    source: SourceModel,
    settings: AdaptSettings,
    plan: AdaptPlan,
    rows: int,
    before: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    """The `bnserve.adapt` object (docs/contracts.md)."""
    data_sha256 = hashlib.sha256(settings.data.read_bytes()).hexdigest()
    return {
        "source": settings.source.name,
        "source_graph_sha256": source.card.graph_sha256,
        "data": settings.data.name,
        "data_sha256": data_sha256,
        "rows": rows,
        "prior_rows": plan.prior_rows,
        "layers": layer_range(plan.layers),
        "input_standardization": plan.input_standardization,
        "forced": settings.force,
        "drift_before": drift_summary(before),
        "drift_after": drift_summary(after),
    }


def _write(out: Path, payload: bytes) -> None:
    """Atomically (a temporary name, then rename): a reader never sees half a model."""
    try:
        write_bytes(out, payload)
    except OSError as error:
        then = "make room or choose another --out" if disk_full(error) else "choose another --out"
        raise AdaptError(
            f"{out}: cannot write the model, {os_error_line(error)}; nothing was written; {then}"
        ) from None
