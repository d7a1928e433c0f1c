"""Domain errors and the one table that maps each to its gRPC code and its HTTP status.

Model, batching and repository code raise these. Both transports and the metrics read
`STATUS_BY_ERROR`: gRPC servicers wrap every RPC handler in `translate_errors`
(`translate_stream_errors` for streamed answers), the HTTP transport answers `status_for(error)
.http`, and the metrics count an HTTP answer under its `.grpc` code. Any other exception answers
a generic INTERNAL (500) and its full traceback goes to the server log, not the client.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import NamedTuple, NoReturn, Protocol, TypeVar

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


class CaptureOff(ServingError):
    """A call that needs the capture store (feedback) on a server without one."""


class Status(NamedTuple):
    """One answer's status on each transport; `grpc` is also the code the metrics count."""

    grpc: grpc.StatusCode
    http: int


# The HTTP status of each gRPC code is the canonical one of google.rpc.Code (what grpc-gateway
# and Google's APIs answer), so a client reads the same meaning on either transport.
STATUS_BY_ERROR: dict[type[ServingError], Status] = {
    InvalidInput: Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    ModelNotFound: Status(grpc.StatusCode.NOT_FOUND, 404),
    ModelNotReady: Status(grpc.StatusCode.UNAVAILABLE, 503),
    Overloaded: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    DeadlineExpired: Status(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    # Retrying does not help until someone replaces the file: not UNAVAILABLE/503, which
    # clients retry (docs/serving.md, Errors).
    ModelLoadError: Status(grpc.StatusCode.FAILED_PRECONDITION, 400),
    # Not offered by this server, whoever asks: not PERMISSION_DENIED/403, which sends an
    # operator to the tokens (docs/serving.md, Errors).
    ModelControlClosed: Status(grpc.StatusCode.UNIMPLEMENTED, 501),
    # The server's configuration, not the request, must change.
    CaptureOff: Status(grpc.StatusCode.FAILED_PRECONDITION, 400),
}
OK = Status(grpc.StatusCode.OK, 200)
INTERNAL = Status(grpc.StatusCode.INTERNAL, 500)
# Answers only the HTTP transport gives (gRPC's own stack answers these before a handler runs).
UNAUTHENTICATED = Status(grpc.StatusCode.UNAUTHENTICATED, 401)
NO_ROUTE = Status(grpc.StatusCode.NOT_FOUND, 404)
METHOD_NOT_ALLOWED = Status(grpc.StatusCode.UNIMPLEMENTED, 405)
BODY_TOO_LARGE = Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413)
BODY_TIMEOUT = Status(grpc.StatusCode.DEADLINE_EXCEEDED, 408)  # body slower than its deadline
STOPPING = Status(grpc.StatusCode.UNAVAILABLE, 503)  # a call refused while the server stops

INTERNAL_MESSAGE = "internal server error; the server log has the details"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for quoting a
    library's error inside a ServingError's message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def status_for(error: ServingError) -> Status:
    """The status a domain error answers with (its nearest listed base class's)."""
    for error_type in type(error).__mro__:
        if error_type in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[error_type]
    return INTERNAL


class _AbortingContext(Protocol):
    """What error translation needs of a grpc.ServicerContext (grpc ships no types): its
    abort always raises."""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn: ...


def _abort(error: Exception, context: _AbortingContext, method_name: str) -> NoReturn:
    if isinstance(error, ServingError):
        context.abort(status_for(error).grpc, str(error))
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
