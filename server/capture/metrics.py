"""Prometheus figures of capture: rows written and dropped (counters, summed over processes by
prometheus-client's multiprocess files) and realized quality (gauges computed at scrape time
from the store, so a supervisor's /metrics joins every process's files itself)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bnserve.server.capture.quality import WINDOWS, QualityJoiner


class CaptureMetrics:
    """bnserve_capture_rows_total and bnserve_capture_dropped_total{reason} (queue_full: the
    writer's queue was full; write_error: the disk refused)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._written = Counter(
            "bnserve_capture_rows",
            "Examples (and true answers) written to the capture store.",
            registry=registry,
        )
        self._dropped = Counter(
            "bnserve_capture_dropped",
            "Examples (and true answers) not captured: the writer's queue was full (queue_full) "
            "or the disk refused them (write_error). Calls are answered all the same.",
            ["reason"],
            registry=registry,
        )

    def written(self, rows: int) -> None:
        self._written.inc(rows)

    def dropped(self, rows: int, reason: str) -> None:
        self._dropped.labels(reason).inc(rows)


class QualityCollector(Collector):
    """Realized quality per model version and window, and each model's unjoined labels."""

    def __init__(self, joiner: QualityJoiner) -> None:
        self._joiner = joiner

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "version", "window"]

        def gauge(name: str, text: str, names: list[str] = labels) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=names)

        families = {
            "labelled": gauge("bnserve_quality_labelled", "Calls joined with a true answer."),
            "accuracy": gauge(
                "bnserve_quality_accuracy", "Share of labelled calls answered right."
            ),
            "log_loss": gauge("bnserve_quality_log_loss", "Mean -log p(true class)."),
            "confusion": gauge(
                "bnserve_quality_confusion",
                "Labelled calls by true and predicted class.",
                [*labels, "true", "predicted"],
            ),
            "rmse": gauge("bnserve_quality_rmse", "Root mean squared error (target units)."),
            "mae": gauge("bnserve_quality_mae", "Mean absolute error (target units)."),
            "unknown": gauge(
                "bnserve_feedback_unknown",
                "True answers whose id matches no captured call (never seen, not sampled, "
                "trimmed away).",
                ["model"],
            ),
            "late": gauge(
                "bnserve_feedback_late",
                "True answers that arrived after the feedback window (not used).",
                ["model"],
            ),
        }
        pair_labels = ["model", "primary", "shadow"]
        for family, text in [
            ("shadow_calls", "Sampled calls both the served version and its shadow answered."),
            ("shadow_agreement", "Share of them with the same predicted class."),
            ("shadow_delta_mean", "Mean over them of the largest |Δp| (|Δy|) of a call."),
            ("shadow_delta_max", "Largest |Δp| (|Δy|) of any of them."),
            ("shadow_ms_mean", "The shadow's mean milliseconds a call (its own run)."),
            ("shadow_ms_max", "The shadow's largest milliseconds a call."),
        ]:
            families[family] = gauge(f"bnserve_{family}", text, pair_labels)
        families["shadow_quality"] = gauge(
            "bnserve_shadow_realized",
            "Realized quality of both versions on the same labelled calls (figure: accuracy or "
            "rmse; role: primary or shadow).",
            [*pair_labels, "role", "figure"],
        )
        for model, quality in self._joiner.models().items():
            for pair in quality.shadows:
                pair_key = [model, pair.primary, pair.shadow]
                families["shadow_calls"].add_metric(pair_key, pair.calls)
                for name, value in [
                    ("shadow_agreement", pair.agreement),
                    ("shadow_delta_mean", pair.delta_mean),
                    ("shadow_delta_max", pair.delta_max),
                    ("shadow_ms_mean", pair.shadow_ms_mean),
                    ("shadow_ms_max", pair.shadow_ms_max),
                ]:
                    if value == value:  # NaN: nothing to say
                        families[name].add_metric(pair_key, value)
                for role, side in [
                    ("primary", pair.primary_quality),
                    ("shadow", pair.shadow_quality),
                ]:
                    for figure in ("accuracy", "rmse"):
                        value = getattr(side, figure)
                        if side.labelled and value == value:
                            families["shadow_quality"].add_metric([*pair_key, role, figure], value)
            families["unknown"].add_metric([model], quality.unknown)
            families["late"].add_metric([model], quality.late)
            for version, figures in quality.versions.items():
                for window in WINDOWS:
                    w = getattr(figures, window)
                    key = [model, version, window]
                    families["labelled"].add_metric(key, w.labelled)
                    if not w.labelled:
                        continue
                    if figures.task == "classification":
                        families["accuracy"].add_metric(key, w.accuracy)
                        families["log_loss"].add_metric(key, w.log_loss)
                        for (true, predicted), count in w.confusion.items():
                            families["confusion"].add_metric([*key, true, predicted], count)
                    else:
                        families["rmse"].add_metric(key, w.rmse)
                        families["mae"].add_metric(key, w.mae)
        yield from families.values()
