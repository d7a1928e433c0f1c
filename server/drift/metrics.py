"""Prometheus gauges of every served version's drift (drift/monitor.py), computed at scrape time."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bnserve.atomic import write_bytes
from bnserve.server.drift.monitor import WINDOWS, DriftMonitor
from bnserve.server.plane.errors import ServingError

log = logging.getLogger(__name__)


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
    and likewise per column of a model with text columns or gaps, so the label set stays
    bounded whatever the number of features.
    """

    def __init__(self, repository: Any) -> None:
        self._repository = repository  # a ModelRepository (names, versions, get)

    def describe(self) -> list[Any]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        model_labels = ["model", "version", "window"]
        feature_labels = ["model", "version", "window", "feature"]
        layer_labels = ["model", "version", "window", "layer"]
        column_labels = ["model", "version", "window", "column"]
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
            "columns_flagged": GaugeMetricFamily(
                "bnserve_drift_columns_flagged",
                "Columns past a drift threshold (models with text columns or gaps).",
                labels=model_labels,
            ),
            "column_psi": GaugeMetricFamily(
                "bnserve_drift_column_psi",
                "Population stability index of a column: a categorical one over its levels, "
                "<other> and <missing>; a numeric one over (present, missing) (top-k columns).",
                labels=column_labels,
            ),
            "column_missing": GaugeMetricFamily(
                "bnserve_drift_column_missing_rate",
                "Share of a column's cells that are missing (top-k columns).",
                labels=column_labels,
            ),
            "column_unseen": GaugeMetricFamily(
                "bnserve_drift_column_unseen_share",
                "Share of a categorical column's cells with a level training never had "
                "(top-k columns).",
                labels=column_labels,
            ),
            "column_flagged": GaugeMetricFamily(
                "bnserve_drift_column_flagged",
                "1 when a column is past a drift threshold (top-k columns).",
                labels=column_labels,
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
                if monitor.reference.columns is None:
                    continue
                families["columns_flagged"].add_metric(labels, len(figures["flagged_columns"]))
                worst_columns = sorted(figures["columns"], key=lambda c: -c["score"])
                for column in worst_columns[: monitor.settings.top_k]:
                    values = [*labels, column["name"]]
                    families["column_psi"].add_metric(values, column["psi"])
                    families["column_missing"].add_metric(values, column["live_missing_rate"])
                    families["column_unseen"].add_metric(values, column["unseen_share"])
                    families["column_flagged"].add_metric(values, float(column["flagged"]))
        yield from families.values()


# --processes N: prometheus-client's multiprocess files carry only its own metric types, so a
# child's drift gauges (computed at scrape time by DriftCollector) would never reach the
# supervisor's summed /metrics. Each child writes them instead, every CHILD_EXPORT_INTERVAL_S,
# to DIR/drift-PID.prom (the text format, with a `process` label), and the supervisor's
# /metrics reads every such file (ChildDriftCollector). Drift stays per process: each one sees
# only the calls the kernel gave it.
CHILD_EXPORT_INTERVAL_S = 2.0
CHILD_FILE_PREFIX = "drift-"


def child_drift_file(directory: str, pid: int) -> Path:
    """Where process `pid` writes its drift gauges."""
    return Path(directory) / f"{CHILD_FILE_PREFIX}{pid}.prom"


class _Labelled(Collector):
    """DriftCollector's families with one more label, process=index."""

    def __init__(self, collector: DriftCollector, index: int) -> None:
        self._collector = collector
        self._index = str(index)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Metric]:
        for family in self._collector.collect():
            labelled = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                labels = {**sample.labels, "process": self._index}
                labelled.add_sample(sample.name, labels, sample.value)
            yield labelled


class ChildDriftWriter:
    """A supervised child's drift gauges, written to its file in the supervisor's metrics
    directory every interval_s on a daemon thread (removed by `stop`)."""

    def __init__(
        self,
        repository: Any,
        directory: str,
        index: int,
        interval_s: float = CHILD_EXPORT_INTERVAL_S,
    ) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Labelled(DriftCollector(repository), index))
        self.path = child_drift_file(directory, os.getpid())
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-export", daemon=True)

    def write(self) -> None:
        """Write the gauges now (whole file, then rename)."""
        write_bytes(self.path, generate_latest(self._registry))

    def start(self) -> None:
        self._write_or_warn()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(OSError):  # never written, or its directory is gone
            self.path.unlink()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._write_or_warn()

    def _write_or_warn(self) -> None:
        try:
            self.write()
        except OSError as error:  # a full disk: serving goes on, the next interval tries again
            log.warning("drift gauges not written to %s: %s", self.path, error)


class ChildDriftCollector(Collector):
    """The supervisor's side: every child's drift gauges from DIR/drift-*.prom, merged family
    by family (each sample carries its process label)."""

    def __init__(self, directory: str) -> None:
        self._directory = Path(directory)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for path in sorted(self._directory.glob(f"{CHILD_FILE_PREFIX}*.prom")):
            try:
                text = path.read_text()
            except OSError:  # the child's file was replaced or removed between list and read
                continue
            for family in text_string_to_metric_families(text):
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                into.samples.extend(family.samples)
        yield from merged.values()
