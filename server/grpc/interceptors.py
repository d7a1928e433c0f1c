"""What the server's interceptors share: a method handler's behaviour by call shape, and the
wrappers of each method's handler, built once and reused for every call of that method.

grpcio ships no type information: its handlers, call details and contexts are Any to mypy,
and the aliases here are where that boundary is written down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

# (request, context) → response. A request-streaming behaviour takes an iterator of requests,
# a response-streaming one returns an iterator of responses.
Behavior = Callable[[Any, grpc.ServicerContext], Any]
Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]
WrapHandler = Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]  # (handler, method)

# Methods whose wrapper is kept; beyond it (a client inventing method names) a wrapper is built
# per call instead, so no client can grow the table without end.
MAX_CACHED_METHODS = 1024


def behavior_field(handler: grpc.RpcMethodHandler) -> str:
    """The one behaviour field a handler sets: unary_unary, unary_stream, stream_unary or
    stream_stream."""
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    return f"{request}_{response}"


def replace_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior], Behavior], **changes: Any
) -> grpc.RpcMethodHandler:
    """handler with its behaviour replaced by wrap(behaviour), and any other fields changed."""
    field = behavior_field(handler)
    return handler._replace(**{field: wrap(getattr(handler, field))}, **changes)


class HandlerWrappers:
    """Each method's wrapped handler, built by `wrap` on the method's first call and reused
    (built again only if the services hand out another handler for the method)."""

    def __init__(self, wrap: WrapHandler) -> None:
        self._wrap = wrap
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def of(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The wrapper of handler, the handler of method ("/package.Service/Method")."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        if cached is not None or len(self._wrapped) < MAX_CACHED_METHODS:
            self._wrapped[method] = (handler, wrapped)
        return wrapped
