"""What every gRPC call leaves behind for operators: its metrics, its access-log line and its
trace span, all from one interceptor that times the call once.

`ObservabilityInterceptor` resolves the metric children once per (method, code, model) (in
ServerMetrics.observe_call), so a call costs a dict lookup, a counter increment and a histogram
observation (bench/metrics_overhead.py measures it). The model label takes only names this
server has answered for, so a client cannot grow the label set by inventing model names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from bnserve.server.grpc.decoding import current_request
from bnserve.server.grpc.interceptors import (
    Behavior,
    Continuation,
    HandlerWrappers,
    replace_behavior,
)
from bnserve.server.grpc.servicers.unimplemented import is_unimplemented
from bnserve.server.observability.logs import LogThrottle
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.observability.tracing import Tracing

log = logging.getLogger(__name__)
access_log = logging.getLogger("server.access")


class Observe(Protocol):
    """Records one answered call: method, its status, seconds from arrival to answer, the
    call's context and (unary responses) the response."""

    def __call__(
        self,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        context: grpc.ServicerContext,
        response: Any = None,
    ) -> None: ...


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


class ObservabilityInterceptor(grpc.ServerInterceptor):
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
        self._timed = HandlerWrappers(self._wrap)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or is_unimplemented(handler):
            self._count_unimplemented(handler_call_details.method)
            return handler  # answered UNIMPLEMENTED, counted apart from the served methods
        return self._timed.of(handler, handler_call_details.method)

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
        timed = _timed_stream if handler.response_streaming else _timed_unary
        name = method.lstrip("/")  # the metrics' method label: "bnserve.v1.Predictor/Predict"
        observe, tracing = self.observe, self._tracing
        return replace_behavior(handler, lambda behavior: timed(behavior, name, observe, tracing))


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


def _final_code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    code: grpc.StatusCode | None = context.code()
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
    behavior: Behavior, method: str, observe: Observe, tracing: Tracing | None = None
) -> Behavior:
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
    behavior: Behavior, method: str, observe: Observe, tracing: Tracing | None = None
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
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
