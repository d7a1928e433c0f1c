"""The gRPC side of the call observer (server/observability/calls.py): one interceptor that
opens each call's span, times it once and hands the outcome to the observer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from bnserve.server.grpc.decoding import current_request
from bnserve.server.grpc.interceptors import (
    Behavior,
    Continuation,
    HandlerWrappers,
    replace_behavior,
)
from bnserve.server.grpc.servicers.unimplemented import is_unimplemented
from bnserve.server.observability.calls import CallObserver


class _GrpcCall:
    """CallFacts of a gRPC call: read from its parsed request, its response and its context."""

    __slots__ = ("_context", "_request", "_response")

    def __init__(self, request: Any, response: Any, context: grpc.ServicerContext) -> None:
        self._request, self._response, self._context = request, response, context

    def asked_model(self) -> str:
        return str(getattr(self._request, "model_name", ""))

    def answered_model(self) -> str:
        return str(getattr(self._response, "model_name", ""))

    def version(self) -> str:
        return str(
            getattr(self._response, "model_version", "")
            or getattr(self._request, "model_version", "")
        )

    def request_id(self) -> str:
        return str(getattr(self._request, "id", "") or getattr(self._response, "id", ""))

    def peer(self) -> str:
        return str(self._context.peer())


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Observes every served call (status from the servicer's abort, UNKNOWN if it raised;
    CANCELLED for a stream the client left) and counts calls to unimplemented methods. Goes
    outermost, so calls refused by the interceptors after it are observed too."""

    def __init__(self, observer: CallObserver) -> None:
        self._observer = observer
        self._timed = HandlerWrappers(self._wrap)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or is_unimplemented(handler):
            self._observer.count_unimplemented(handler_call_details.method)
            return handler  # answered UNIMPLEMENTED, counted apart from the served methods
        return self._timed.of(handler, handler_call_details.method)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        timed = _timed_stream if handler.response_streaming else _timed_unary
        name = method.lstrip("/")  # the metrics' method label: "bnserve.v1.Predictor/Predict"
        observer = self._observer
        return replace_behavior(handler, lambda behavior: timed(behavior, name, observer))


def _final_code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    code: grpc.StatusCode | None = context.code()
    if code is None:
        return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK
    return code


def _timed_unary(behavior: Behavior, method: str, observer: CallObserver) -> Behavior:
    def timed(request: Any, context: grpc.ServicerContext) -> Any:
        with observer.span(method, context.invocation_metadata(), "grpc"):
            start = time.perf_counter()
            raised = True
            response = None
            try:
                response = behavior(request, context)
                raised = False
                return response
            finally:
                seconds = time.perf_counter() - start
                facts = _GrpcCall(current_request.get(), response, context)
                observer.observe(method, _final_code(context, raised), seconds, facts)

    return timed


def _timed_stream(
    behavior: Behavior, method: str, observer: CallObserver
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with observer.span(method, context.invocation_metadata(), "grpc"):
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
                facts = _GrpcCall(current_request.get(), None, context)
                observer.observe(method, code, time.perf_counter() - start, facts)

    return timed
