"""Prometheus metrics: calls by method, model and status code, latency, batch sizes, versions,
reloads, calls waiting for their message, process resources.

Each server has its own registry (several servers in one test process do not collide) and its
own HTTP endpoint on `metrics_port` (observability/metrics_http.py: /metrics only). The calls
of both transports are counted by the call observer (server/observability/calls.py) through
`observe_call`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc
import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bnserve.server.observability.metrics_http import MetricsHTTPServer, serve_metrics
from bnserve.server.plane.batching import Predict
from bnserve.server.plane.inputs import ModelInput

# Counters without their `_created` twin series (prometheus-client exports one per counter and
# histogram by default, doubling the series a scrape carries).
disable_created_metrics()

# Seconds: a local unary call takes ~0.1–1 ms; streams and overload push into seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # examples per run


class WaitingCalls(Protocol):
    """What the metrics read of a server pool's calls waiting for their message
    (server/grpc/executor.py): how many wait now, and how many were answered without it, by
    reason."""

    @property
    def count(self) -> int: ...

    @property
    def dropped(self) -> Mapping[str, int]: ...


class StockPath(Protocol):
    """Calls that took grpcio's stock path, not the stall-protected one (server/_compat.py)."""

    @property
    def count(self) -> int: ...


class HttpConnections(Protocol):
    """The HTTP transport's open connections and those it closed, by reason
    (server/rest/connections.py)."""

    @property
    def count(self) -> int: ...

    @property
    def closed(self) -> Mapping[str, int]: ...


class ServerMetrics:
    """The server's metrics in one registry; `serve(host, port)` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bnserve_requests",
            "Calls answered (gRPC and HTTP), by method, model (empty: none or not served here) "
            "and status (the gRPC code; an HTTP answer's code of the same meaning).",
            ["method", "model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bnserve_request_duration_seconds",
            "Time from a call's arrival at its handler to its answer (whole stream for streams).",
            ["method", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unimplemented = Counter(
            "bnserve_unimplemented_calls",
            "Calls to methods this server does not serve (answered UNIMPLEMENTED).",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_* (RSS, CPU, fds, start time)
        self.batch_size = Histogram(
            "bnserve_batch_size",
            "Examples scored per onnxruntime run (dynamic batches or whole requests).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.loaded_versions = Gauge(
            "bnserve_model_version_loaded",
            "1 for every model version being served.",
            ["model", "version"],
            registry=self.registry,
            multiprocess_mode="livemax",  # --processes N: 1 if any live process serves it
        )
        self.model_loads = Counter(
            "bnserve_model_loads",
            "Model versions loaded, verified, warmed and swapped in (start-up and reloads).",
            ["model"],
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "bnserve_reload_failures",
            "Model version files refused: unreadable, bad metadata, hash or parity mismatch.",
            ["model"],
            registry=self.registry,
        )
        self.unseen_levels = Counter(
            "bnserve_unseen_levels",
            "Cells of requests whose level the training split never had, by model and "
            "categorical column (format-2 models; scored as the column's <other> level, or the "
            "request refused with --unseen-levels error).",
            ["model", "column"],
            registry=self.registry,
        )
        self.missing_cells = Counter(
            "bnserve_missing_cells",
            "Missing cells of scored requests (null, NaN, empty or a missing token), by model and "
            "column (format-2 models; filled inside the graph).",
            ["model", "column"],
            registry=self.registry,
        )
        self._call_counters: dict[tuple[str, str, str], Any] = {}
        self._call_latencies: dict[tuple[str, str], Any] = {}
        self._http: MetricsHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    def observe_call(
        self, method: str, code: grpc.StatusCode, seconds: float, model: str = ""
    ) -> None:
        """Count one answered call of method (for model) with its status code and duration."""
        key = (method, model, code.name)
        counter = self._call_counters.get(key)
        if counter is None:
            counter = self._call_counters[key] = self.requests.labels(method, model, code.name)
        latency = self._call_latencies.get((method, model))
        if latency is None:
            latency = self._call_latencies[(method, model)] = self.latency.labels(method, model)
        counter.inc()
        latency.observe(seconds)

    def watch_waiting_calls(self, waiting: WaitingCalls) -> None:
        """Export a server pool's calls waiting for their message (server/grpc/executor.py)."""
        self.registry.register(_WaitingCallsCollector(waiting))

    def watch_stall_protection(self, stock_path: StockPath | None) -> None:
        """Export whether the stall-protected gRPC pool runs (stock_path None: grpcio's own pool,
        --allow-unpinned-grpcio) and how many calls took the stock path anyway."""
        self.registry.register(_StallProtectionCollector(stock_path))

    def watch_http_connections(self, connections: HttpConnections) -> None:
        """Export the HTTP transport's connections (open now, closed by the server by reason)."""
        self.registry.register(_HttpConnectionsCollector(connections))

    def instrument_predict(self, model_name: str, predict: Predict) -> Predict:
        """predict, recording each run's example count in bnserve_batch_size."""
        batch_size = self.batch_size.labels(model_name)

        def counted(x: ModelInput) -> list[np.ndarray]:
            batch_size.observe(x.shape[0])
            return predict(x)

        return counted

    def cell_counter(self, model_name: str) -> Callable[[str, int, int], None]:
        """count(column, unseen, missing): add to the model's unseen-level and missing-cell
        counters (Model.cell_counter)."""
        unseen_children: dict[str, Any] = {}
        missing_children: dict[str, Any] = {}

        def count(column: str, unseen: int, missing: int) -> None:
            if unseen:
                child = unseen_children.get(column)
                if child is None:
                    child = unseen_children[column] = self.unseen_levels.labels(model_name, column)
                child.inc(unseen)
            if missing:
                child = missing_children.get(column)
                if child is None:
                    child = missing_children[column] = self.missing_cells.labels(model_name, column)
                child.inc(missing)

        return count

    def version_loaded(self, model_name: str, version: str) -> None:
        self.loaded_versions.labels(model_name, version).set(1)
        self.model_loads.labels(model_name).inc()

    def version_unloaded(self, model_name: str, version: str) -> None:
        self.loaded_versions.labels(model_name, version).set(0)  # multiprocess files keep it
        self.loaded_versions.remove(model_name, version)

    def model_configured(self, model_name: str) -> None:
        """Show the model's reload-failure counter at 0 before anything fails."""
        self.reload_failures.labels(model_name)

    def reload_failed(self, model_name: str) -> None:
        self.reload_failures.labels(model_name).inc()

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on host:port (0: a free port); returns the port."""
        try:
            self._http, self._http_thread = serve_metrics(host, port, self.registry)
        except OSError as error:
            raise OSError(
                f"cannot serve metrics on {host}:{port} ({error.strerror}); pick another "
                "--metrics-port, or 0 to turn metrics off"
            ) from None
        return int(self._http.server_address[1])

    def stop(self) -> None:
        """Close the HTTP endpoint, if open."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _WaitingCallsCollector:
    """Reads a transport pool's waiting-call bookkeeping at scrape time."""

    def __init__(self, waiting: WaitingCalls) -> None:
        self._waiting = waiting

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "bnserve_calls_waiting_for_message",
            "Calls whose request message has not fully arrived (they hold no thread).",
            value=self._waiting.count,
        )
        dropped = CounterMetricFamily(
            "bnserve_calls_dropped",
            "Calls answered before their message came: 'timeout' (request_timeout_s) or "
            "'overflow' (max_waiting_calls, the oldest dropped).",
            labels=["reason"],
        )
        for reason, count in self._waiting.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped


class _StallProtectionCollector:
    """Reads the gRPC pool's stall protection at scrape time."""

    def __init__(self, stock_path: StockPath | None) -> None:
        self._stock_path = stock_path

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "bnserve_grpc_stall_protection",
            "1: a gRPC call gets a thread only once its message is in (server/grpc/executor.py); "
            "0: grpcio's own pool (--allow-unpinned-grpcio on a grpcio other than the pinned one).",
            value=0 if self._stock_path is None else 1,
        )
        yield CounterMetricFamily(
            "bnserve_grpc_stock_path_calls",
            "gRPC calls that took grpcio's stock path because grpc handed them over in a shape "
            "other than the one checked (server/_compat.py); each went without stall protection.",
            value=0 if self._stock_path is None else self._stock_path.count,
        )


class _HttpConnectionsCollector:
    """Reads the HTTP connection registry at scrape time."""

    def __init__(self, connections: HttpConnections) -> None:
        self._connections = connections

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "bnserve_http_connections", "HTTP connections open.", value=self._connections.count
        )
        closed = CounterMetricFamily(
            "bnserve_http_connections_closed",
            "HTTP connections the server closed: 'header_timeout' (http_header_timeout_s), "
            "'evicted' (the oldest idle one, past http_max_connections), 'over_capacity' (a new "
            "one while every open one was busy).",
            labels=["reason"],
        )
        for reason in ("header_timeout", "evicted", "over_capacity"):
            closed.add_metric([reason], self._connections.closed.get(reason, 0))
        yield closed
