"""Prometheus gauges of every served version's drift (drift/monitor.py), computed at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bnserve.server.drift.monitor import WINDOWS, DriftMonitor
from bnserve.server.plane.errors import ServingError


def repository_monitors(repository: Any) -> Iterator[tuple[str, str, DriftMonitor]]:
    """(name, version, monitor) of every served version that keeps drift statistics."""
    for name in repository.names():
        for version in repository.versions(name):
            try:
                monitor = repository.get(name, version).model.drift
            except ServingError:
                continue  # removed between the listing and the lookup
            if monitor is not None:
                yield name, version, monitor


class DriftCollector(Collector):
    """Prometheus gauges of every served version's drift, computed at scrape time.

    Per feature only the `top_k` highest-scoring features of each version (all when F ≤ top_k),
    so the label set stays bounded whatever the number of features.
    """

    def __init__(self, repository: Any) -> None:
        self._repository = repository  # a ModelRepository (names, versions, get)

    def describe(self) -> list[Any]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        model_labels = ["model", "version", "window"]
        feature_labels = ["model", "version", "window", "feature"]
        layer_labels = ["model", "version", "window", "layer"]
        families = {
            "examples": GaugeMetricFamily(
                "bnserve_drift_examples",
                "Examples in the drift statistics (recent window: decayed weight).",
                labels=model_labels,
            ),
            "score": GaugeMetricFamily(
                "bnserve_drift_score",
                "Worst feature drift relative to its threshold (> 1: some feature is flagged).",
                labels=model_labels,
            ),
            "flagged": GaugeMetricFamily(
                "bnserve_drift_features_flagged",
                "Features past a drift threshold.",
                labels=model_labels,
            ),
            "outside": GaugeMetricFamily(
                "bnserve_drift_out_of_range_share",
                "Share of examples with a feature outside the training split's range.",
                labels=model_labels,
            ),
            "layer": GaugeMetricFamily(
                "bnserve_drift_layer_score",
                "Mean over a hidden layer's units of KL(N(mean, var) of z_norm ‖ N(0, 1)).",
                labels=layer_labels,
            ),
            "shift": GaugeMetricFamily(
                "bnserve_drift_feature_mean_shift",
                "|μ_live − μ_train| / σ_train of a feature (top-k features).",
                labels=feature_labels,
            ),
            "ratio": GaugeMetricFamily(
                "bnserve_drift_feature_variance_ratio",
                "σ²_live / σ²_train of a feature (top-k features).",
                labels=feature_labels,
            ),
            "psi": GaugeMetricFamily(
                "bnserve_drift_feature_psi",
                "Population stability index over the training deciles (top-k features).",
                labels=feature_labels,
            ),
            "feature_flagged": GaugeMetricFamily(
                "bnserve_drift_feature_flagged",
                "1 when a feature is past a drift threshold (top-k features).",
                labels=feature_labels,
            ),
        }
        for name, version, monitor in repository_monitors(self._repository):
            report = monitor.report()
            for window in WINDOWS:
                figures = report[window]
                labels = [name, version, window]
                families["examples"].add_metric(labels, figures["examples"])
                families["score"].add_metric(labels, figures["score"])
                families["flagged"].add_metric(labels, len(figures["flagged_features"]))
                families["outside"].add_metric(labels, figures["out_of_range_share"])
                for layer in figures["layers"]:
                    families["layer"].add_metric([*labels, layer["name"]], layer["score"])
                ranked = sorted(figures["features"], key=lambda f: -f["score"])
                for feature in ranked[: monitor.settings.top_k]:
                    feature_labels_values = [*labels, feature["name"]]
                    families["shift"].add_metric(feature_labels_values, feature["mean_shift"])
                    families["ratio"].add_metric(feature_labels_values, feature["variance_ratio"])
                    families["psi"].add_metric(feature_labels_values, feature["psi"])
                    families["feature_flagged"].add_metric(
                        feature_labels_values, float(feature["flagged"])
                    )
        yield from families.values()
