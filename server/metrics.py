"""Prometheus metrics: calls by method and status code, latency, batch sizes, versions, reloads.

Each server has its own registry (several servers in one test process do not collide) and its
own HTTP endpoint on `metrics_port`. Counting goes through `MetricsInterceptor`, which resolves
label children once per (method, code) so a call costs a dict lookup, a counter increment and
a histogram observation (bench/metrics_overhead.py measures it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
            "gRPC calls answered, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bnserve_request_duration_seconds",
            "Time from a call's arrival at its handler to its answer (whole stream for streams).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self._call_counters: dict[tuple[str, str], Any] = {}
        self._call_latencies: dict[str, Any] = {}
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def observe_call(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one answered call of method with its status code and duration."""
        key = (method, code.name)
        counter = self._call_counters.get(key)
        if counter is None:
            counter = self._call_counters[key] = self.requests.labels(method, code.name)
        latency = self._call_latencies.get(method)
        if latency is None:
            latency = self._call_latencies[method] = self.latency.labels(method)
        counter.inc()
        latency.observe(seconds)

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

    def reload_failed(self, model_name: str) -> None:
        self.reload_failures.labels(model_name).inc()

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on host:port (0: a free port); returns the port."""
        try:
            self._http, self._http_thread = start_http_server(
                port, addr=host, registry=self.registry
            )
        except OSError as error:
            raise OSError(
                f"cannot serve metrics on {host}:{port} ({error.strerror}); pick another "
                "--metrics-port, or 0 to turn metrics off"
            ) from None
        return self._http.server_port

    def stop(self) -> None:
        """Close the HTTP endpoint, if open."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class MetricsInterceptor(grpc.ServerInterceptor):
    """Times and counts every call (status from the servicer's abort, UNKNOWN if it raised)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        # method → (handler, its timed wrapper): wrapping once per method, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED itself
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, handler_call_details.method.lstrip("/"))
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        observe = self._metrics.observe_call
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_timed_unary(handler.unary_unary, method, observe))
        if handler.stream_unary is not None:
            return handler._replace(
                stream_unary=_timed_unary(handler.stream_unary, method, observe)
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=_timed_stream(handler.unary_stream, method, observe)
            )
        return handler._replace(stream_stream=_timed_stream(handler.stream_stream, method, observe))


Observe = Callable[[str, grpc.StatusCode, float], None]


def _final_code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK
    return code


def _timed_unary(behavior: Callable[..., Any], method: str, observe: Observe) -> Callable[..., Any]:
    def timed(request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        raised = True
        try:
            response = behavior(request, context)
            raised = False
            return response
        finally:
            observe(method, _final_code(context, raised), time.perf_counter() - start)

    return timed


def _timed_stream(
    behavior: Callable[..., Iterator[Any]], method: str, observe: Observe
) -> Callable[..., Iterator[Any]]:
    def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
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
            observe(method, code, time.perf_counter() - start)

    return timed
