"""Undecodable request bytes answer INVALID_ARGUMENT with the message type, not INTERNAL.

grpcio parses each request with the handler's deserializer and answers a parse failure with
INTERNAL "Exception deserializing request!", which reads as a server bug. This interceptor
takes the parsing over: the handler receives bytes, and bad bytes get INVALID_ARGUMENT naming
the method and the expected message. Same parse, same cost, a status a client can act on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc

from server.errors import InvalidInput

Parse = Callable[[bytes], Any]

# The parsed request of the unary call in progress (each grpc call runs in its own context),
# for the outer interceptors that see only its bytes: metrics and the access log.
current_request: ContextVar[Any] = ContextVar("current_request", default=None)


def _message(method: str, error: Exception) -> str:
    return f"{method}: the request bytes are not a valid protobuf message of this method ({error})"


def _parse_or_abort(parse: Parse, raw: bytes, context: grpc.ServicerContext, method: str) -> Any:
    try:
        request = parse(raw)
    except Exception as error:  # protobuf raises DecodeError, and others for deep nesting
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, error))
    current_request.set(request)
    return request


def _parse_stream(
    parse: Parse, raw_messages: Iterator[bytes], context: grpc.ServicerContext, method: str
) -> Iterator[Any]:
    for raw in raw_messages:
        try:
            yield parse(raw)
        except Exception as error:
            message = _message(method, error)
            # Set the status first: a servicer that does not translate InvalidInput still ends
            # the call with it (grpc keeps a code set before the handler raised).
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(message)
            raise InvalidInput(message) from None


class RequestDecodingInterceptor(grpc.ServerInterceptor):
    """Parse requests in the handler, answering bad bytes with INVALID_ARGUMENT."""

    def __init__(self) -> None:
        # method → (handler, its decoding wrapper): wrapping once per method, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _decoding(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _decoding(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer
    if handler.request_streaming:
        behavior = handler.stream_unary or handler.stream_stream
        field = "stream_unary" if handler.stream_unary else "stream_stream"

        def decoded(raw_messages: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            return behavior(_parse_stream(parse, raw_messages, context, method), context)

    else:
        behavior = handler.unary_unary or handler.unary_stream
        field = "unary_unary" if handler.unary_unary else "unary_stream"

        def decoded(raw: bytes, context: grpc.ServicerContext) -> Any:
            return behavior(_parse_or_abort(parse, raw, context, method), context)

    return handler._replace(request_deserializer=None, **{field: decoded})
