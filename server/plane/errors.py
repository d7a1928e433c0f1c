"""Domain errors and the one place that maps them to gRPC status codes.

Model, batching and repository code raise these; servicers wrap every RPC handler in
`translate_errors` (`translate_stream_errors` for streamed answers), which answers a domain
error with its status and message and any other exception with a generic INTERNAL (the full
traceback goes to the server log, not the client).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import NoReturn, Protocol, TypeVar

import grpc

log = logging.getLogger(__name__)


class ServingError(Exception):
    """Base of every error a client may see; the message must say what to fix."""


class InvalidInput(ServingError):
    """The request is malformed: wrong shape, unknown names, NaN/Inf, empty, bad datatype."""


class ModelNotFound(ServingError):
    """No model (or no such version) by that name."""


class ModelNotReady(ServingError):
    """The model is configured but failed to load or has not passed its parity gate yet."""


class Overloaded(ServingError):
    """The inference queue is full; the call is refused at once instead of waiting."""


class DeadlineExpired(ServingError):
    """The client's deadline passed before the call was scored."""


class ModelLoadError(ServingError):
    """A model file cannot be served: unreadable, wrong metadata, hash or parity mismatch."""


class ModelControlClosed(ServingError):
    """Model load/unload asked of a server that does not offer it (see --model-control)."""


STATUS_BY_ERROR: dict[type[ServingError], grpc.StatusCode] = {
    ModelControlClosed: grpc.StatusCode.UNIMPLEMENTED,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
}

INTERNAL_MESSAGE = "internal server error; the server log has the details"


def status_for(error: ServingError) -> grpc.StatusCode:
    """The gRPC status a domain error answers with."""
    for error_type in type(error).__mro__:
        if error_type in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[error_type]
    return grpc.StatusCode.INTERNAL


class _AbortingContext(Protocol):
    """What error translation needs of a grpc.ServicerContext (grpc ships no types): its
    abort always raises."""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn: ...


def _abort(error: Exception, context: _AbortingContext, method_name: str) -> NoReturn:
    if isinstance(error, ServingError):
        context.abort(status_for(error), str(error))
    log.exception("unexpected error in %s", method_name)
    context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")


def translate_errors(
    handler: Callable[[Servicer, Request, grpc.ServicerContext], Response],
) -> Callable[[Servicer, Request, grpc.ServicerContext], Response]:
    """Wrap a unary-response servicer method so errors become gRPC statuses."""
    if inspect.isgeneratorfunction(handler):
        raise TypeError(f"{handler.__qualname__} streams its answers: use translate_stream_errors")
    method_name = handler.__qualname__

    @functools.wraps(handler)
    def unary(self: Servicer, request: Request, context: grpc.ServicerContext) -> Response:
        try:
            return handler(self, request, context)
        except Exception as error:
            _abort(error, context, method_name)

    return unary


def translate_stream_errors(
    handler: Callable[[Servicer, Request, grpc.ServicerContext], Iterator[Response]],
) -> Callable[[Servicer, Request, grpc.ServicerContext], Iterator[Response]]:
    """Wrap a response-streaming servicer method so errors become gRPC statuses; the request
    stream ending with the call (client cancel, idle timeout) ends the answers quietly."""
    method_name = handler.__qualname__

    @functools.wraps(handler)
    def streaming(
        self: Servicer, request: Request, context: grpc.ServicerContext
    ) -> Iterator[Response]:
        try:
            yield from handler(self, request, context)
        except grpc.RpcError:
            return
        except Exception as error:
            _abort(error, context, method_name)

    return streaming
