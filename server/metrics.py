"""Prometheus metrics and the access log: calls by method, model and status code, latency,
batch sizes, versions, reloads, calls waiting for their message, process resources.

Each server has its own registry (several servers in one test process do not collide) and its
own HTTP endpoint on `metrics_port` (server/metrics_http.py: /metrics only). Counting goes
through `MetricsInterceptor`, which resolves label children once per (method, code, model) so a
call costs a dict lookup, a counter increment and a histogram observation
(bench/metrics_overhead.py measures it). The model label takes only names this server has
answered for, so a client cannot grow the label set by inventing model names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

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

from server.decoding import current_request
from server.logs import LogThrottle
from server.metrics_http import MetricsHTTPServer, serve_metrics
from server.servicers.unimplemented import is_unimplemented
from server.tracing import Tracing

# Counters without their `_created` twin series (prometheus-client exports one per counter and
# histogram by default, doubling the series a scrape carries).
disable_created_metrics()

log = logging.getLogger(__name__)
access_log = logging.getLogger("server.access")

# Seconds: a local unary call takes ~0.1–1 ms; streams and overload push into seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # examples per run

Predict = Callable[[np.ndarray], list[np.ndarray]]


class ServerMetrics:
    """The server's metrics in one registry; `serve(host, port)` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bnserve_requests",
            "gRPC calls answered, by method, model (empty: none or not served here) and status.",
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

    def watch_waiting_calls(self, waiting: Any) -> None:
        """Export a server pool's calls waiting for their message (server/transport.py)."""
        self.registry.register(_WaitingCallsCollector(waiting))

    def instrument_predict(self, model_name: str, predict: Predict) -> Predict:
        """predict, recording each run's example count in bnserve_batch_size."""
        batch_size = self.batch_size.labels(model_name)

        def counted(x: np.ndarray) -> list[np.ndarray]:
            batch_size.observe(x.shape[0])
            return predict(x)

        return counted

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

    def __init__(self, waiting: Any) -> None:
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


class _ModelLabel:
    """The model label of a call: a name this server has answered for, else "" (bounded)."""

    def __init__(self) -> None:
        self.served: set[str] = set()

    def of(self, request: Any, response: Any) -> str:
        answered = getattr(response, "model_name", "")
        if answered:
            self.served.add(answered)
            return str(answered)
        asked = getattr(request, "model_name", "")
        return str(asked) if asked in self.served else ""


class MetricsInterceptor(grpc.ServerInterceptor):
    """Times and counts every call (status from the servicer's abort, UNKNOWN if it raised),
    counts calls to unimplemented methods, writes the access log (one line for a share
    `access_log_sample` of calls, 0: none, with method, model, version, status, latency,
    request id and peer) and, with `tracing`, makes each call an OpenTelemetry span. Each part
    may be off (metrics None, sample 0, tracing None)."""

    def __init__(
        self,
        metrics: ServerMetrics | None,
        access_log_sample: float = 0.0,
        tracing: Tracing | None = None,
    ) -> None:
        self._metrics = metrics
        self._sample = access_log_sample
        self._tracing = tracing
        self._models = _ModelLabel()
        self._unimplemented_log = LogThrottle(10.0)
        # method → (handler, its timed wrapper): wrapping once per method, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or is_unimplemented(handler):
            self._count_unimplemented(handler_call_details.method)
            return handler  # answered UNIMPLEMENTED, counted apart from the served methods
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, handler_call_details.method.lstrip("/"))
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _count_unimplemented(self, method: str) -> None:
        if self._metrics is not None:
            self._metrics.unimplemented.inc()
        held_back = self._unimplemented_log.admit("unimplemented")
        if held_back is not None:
            more = f" ({held_back} more since the last line)" if held_back else ""
            log.warning("call to an unimplemented method %.100r%s", method, more)

    def observe(
        self,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        context: grpc.ServicerContext,
        response: Any = None,
    ) -> None:
        """Record one answered call in the metrics and (sampled) the access log."""
        request = current_request.get()
        model = self._models.of(request, response)
        if self._metrics is not None:
            self._metrics.observe_call(method, code, seconds, model)
        if self._sample and (self._sample >= 1 or random.random() < self._sample):
            _write_access_line(method, model, code, seconds, context, request, response)
        if self._tracing is not None:
            self._tracing.end_call(code.name, model)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        observe, tracing = self.observe, self._tracing
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=_timed_unary(handler.unary_unary, method, observe, tracing)
            )
        if handler.stream_unary is not None:
            return handler._replace(
                stream_unary=_timed_unary(handler.stream_unary, method, observe, tracing)
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=_timed_stream(handler.unary_stream, method, observe, tracing)
            )
        return handler._replace(
            stream_stream=_timed_stream(handler.stream_stream, method, observe, tracing)
        )


def _write_access_line(
    method: str,
    model: str,
    code: grpc.StatusCode,
    seconds: float,
    context: grpc.ServicerContext,
    request: Any,
    response: Any,
) -> None:
    fields = {
        "method": method,
        "model": model,
        "version": getattr(response, "model_version", "") or getattr(request, "model_version", ""),
        "code": code.name,
        "ms": round(seconds * 1000, 3),
        "id": getattr(request, "id", "") or getattr(response, "id", ""),
        "peer": context.peer(),
    }
    access_log.info(json.dumps(fields, separators=(",", ":")), extra={"fields": fields})


Observe = Callable[..., None]


def _final_code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK
    return code


def _span(
    tracing: Tracing | None, method: str, context: grpc.ServicerContext
) -> contextlib.AbstractContextManager[Any]:
    if tracing is None:
        return contextlib.nullcontext()
    return tracing.server_span(method, context.invocation_metadata())


def _timed_unary(
    behavior: Callable[..., Any], method: str, observe: Observe, tracing: Tracing | None = None
) -> Callable[..., Any]:
    def timed(request: Any, context: grpc.ServicerContext) -> Any:
        with _span(tracing, method, context):
            start = time.perf_counter()
            raised = True
            response = None
            try:
                response = behavior(request, context)
                raised = False
                return response
            finally:
                seconds = time.perf_counter() - start
                observe(method, _final_code(context, raised), seconds, context, response)

    return timed


def _timed_stream(
    behavior: Callable[..., Iterator[Any]],
    method: str,
    observe: Observe,
    tracing: Tracing | None = None,
) -> Callable[..., Iterator[Any]]:
    def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with _span(tracing, method, context):
            start = time.perf_counter()
            raised = True
            cancelled = False
            try:
                yield from behavior(request, context)
                raised = False
            except GeneratorExit:
                cancelled = True  # the client went away mid-stream
                raise
            finally:
                code = grpc.StatusCode.CANCELLED if cancelled else _final_code(context, raised)
                observe(method, code, time.perf_counter() - start, context)

    return timed
