"""The last handler: any method no service serves answers UNIMPLEMENTED naming what is served
(grpc's own answer is a bare "Method not found!")."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc


class UnimplementedHandler(grpc.GenericRpcHandler):
    """Register after every real service: it claims whatever they did not."""

    def __init__(self, service_names: Sequence[str]) -> None:
        served = ", ".join(sorted(service_names))
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._served = served

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            message = f"{method} is not served here; this server serves {self._served}"
            if len(self._handlers) < 1024:  # a client inventing names cannot grow it without end
                handler = self._handlers[method] = _refusing(message)
            else:
                handler = _refusing(message)
        return handler


def is_unimplemented(handler: grpc.RpcMethodHandler) -> bool:
    """True for the handlers this module answers unknown methods with (metrics count them
    apart: their method names are the client's, not a bounded label set)."""
    return isinstance(handler.stream_stream, _Refusal)


class _Refusal:
    """A stream-stream behaviour answering UNIMPLEMENTED with its message: with raw bytes it
    fits every call shape (on the wire every call is a stream)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __call__(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, self.message)
        yield  # pragma: no cover  (makes this a generator, as a streaming handler must be)


def _refusing(message: str) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(_Refusal(message))
