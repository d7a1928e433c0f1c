"""OpenTelemetry tracing, optional (`--otlp-endpoint`, the `tracing` extra).

Each call, over gRPC or HTTP, becomes a SERVER span named by its method (the metrics' method
label), continuing the caller's trace when its metadata or headers carry a W3C `traceparent`.
Scoring adds child spans from the data plane's own timestamps: `validate` (the input check),
`queue` (admission), `run` (the model; for a call in a dynamic batch, its wait for the batch
too) and `encode` (building the answer). OpenTelemetry is imported only when tracing is on, so
the serving image needs none of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

# Monotonic ns (time.perf_counter_ns, the data plane's clock) of the moment a call was scored.
scored_at: ContextVar[int] = ContextVar("scored_at", default=0)


class Tracing:
    """A tracer and the clock offset that turns perf_counter ns into the epoch ns spans need."""

    def __init__(self, tracer_provider: Any) -> None:
        from opentelemetry import propagate, trace

        self._trace = trace
        self._propagate = propagate
        self.provider = tracer_provider
        self.tracer = tracer_provider.get_tracer("bnserve.server")
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()

    @classmethod
    def to_collector(cls, endpoint: str) -> Tracing:
        """Batch-export spans over OTLP/gRPC to endpoint ("http://host:4317"; https for TLS).
        Raises ValueError when the tracing extra is not installed."""
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ValueError(
                "--otlp-endpoint needs OpenTelemetry: pip install 'bnserve[tracing]'"
            ) from None
        provider = TracerProvider(resource=Resource.create({"service.name": "bnserve"}))
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def server_span(
        self, method: str, metadata: Sequence[tuple[str, Any]] | None, system: str = "grpc"
    ) -> AbstractContextManager[Any]:
        """The call's span, current while its handler runs (`with tracing.server_span(…)`);
        metadata: gRPC metadata or HTTP headers, names lower-case; system: "grpc" or "http"."""
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        parent = self._propagate.extract(carrier)
        span: AbstractContextManager[Any] = self.tracer.start_as_current_span(
            method,
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={"rpc.system": system, "rpc.method": method},
        )
        return span

    def parts(self, marks: Sequence[tuple[str, int, int]]) -> None:
        """Child spans of the current span from (name, start, end) perf_counter ns."""
        if not self._trace.get_current_span().get_span_context().is_valid:
            return
        for name, start, end in marks:
            span = self.tracer.start_span(name, start_time=start + self._epoch_offset_ns)
            span.end(end_time=end + self._epoch_offset_ns)

    def end_call(self, code_name: str, model: str, http_status: int | None = None) -> None:
        """Label the current span with the call's outcome (its gRPC code; an HTTP call also its
        HTTP status) and add its `encode` part."""
        span = self._trace.get_current_span()
        if not span.get_span_context().is_valid:
            return
        span.set_attribute("rpc.grpc.status_code", code_name)
        if http_status is not None:
            span.set_attribute("http.response.status_code", http_status)
        if model:
            span.set_attribute("bnserve.model", model)
        if code_name != "OK":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code_name))
        scored = scored_at.get()
        if scored:
            self.parts([("encode", scored, time.perf_counter_ns())])

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        self.provider.shutdown()
