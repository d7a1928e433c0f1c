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

from bnserve.server.grpc.interceptors import (
    Behavior,
    Continuation,
    HandlerWrappers,
    replace_behavior,
)
from bnserve.server.plane.errors import InvalidInput

Parse = Callable[[bytes], Any]

# The parsed request of the unary call in progress (each grpc call runs in its own context),
# for the outer interceptors that see only its bytes: metrics and the access log.
current_request: ContextVar[Any] = ContextVar("current_request", default=None)
# Its bytes, for a servicer that reads a request's form from them (server/grpc/raw_form.py):
# they belong to the request `current_request` holds.
current_request_bytes: ContextVar[bytes] = ContextVar("current_request_bytes", default=b"")


def _message(method: str, error: Exception) -> str:
    return f"{method}: the request bytes are not a valid protobuf message of this method ({error})"


def _parse_or_abort(parse: Parse, raw: bytes, context: grpc.ServicerContext, method: str) -> Any:
    try:
        request = parse(raw)
    except Exception as error:  # protobuf raises DecodeError, and others for deep nesting
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, error))
    current_request.set(request)
    current_request_bytes.set(raw)
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
        self._decoding = HandlerWrappers(_decoding)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return self._decoding.of(handler, handler_call_details.method)


def _decoding(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    parse: Parse = handler.request_deserializer

    def decode_stream(behavior: Behavior) -> Behavior:
        def decoded(raw_messages: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            return behavior(_parse_stream(parse, raw_messages, context, method), context)

        return decoded

    def decode_one(behavior: Behavior) -> Behavior:
        def decoded(raw: bytes, context: grpc.ServicerContext) -> Any:
            return behavior(_parse_or_abort(parse, raw, context, method), context)

        return decoded

    decode = decode_stream if handler.request_streaming else decode_one
    return replace_behavior(handler, decode, request_deserializer=None)
