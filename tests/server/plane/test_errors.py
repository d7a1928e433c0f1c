"""translate_errors and translate_stream_errors: domain errors keep their status and message;
anything else is a generic INTERNAL with the traceback in the log only."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest

from bnserve.server.plane.errors import (
    INTERNAL_MESSAGE,
    DeadlineExpired,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ServingError,
    translate_errors,
    translate_stream_errors,
)


class _Aborted(Exception):
    pass


class _Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted


class _Servicer:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @translate_errors
    def Unary(self, request: object, context: object) -> object:
        raise self.error

    @translate_stream_errors
    def Stream(self, request: object, context: object) -> Iterator[int]:
        yield 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound("bad"), grpc.StatusCode.NOT_FOUND),
        (ModelNotReady("bad"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("bad"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExpired("bad"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (ModelLoadError("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_domain_errors_map_to_their_status(error: ServingError, code: grpc.StatusCode) -> None:
    for call in ("unary", "stream"):
        context = _Context()
        servicer = _Servicer(error)
        with pytest.raises(_Aborted):
            if call == "unary":
                servicer.Unary(None, context)
            else:
                list(servicer.Stream(None, context))
        assert (context.code, context.details) == (code, "bad")


def test_unexpected_error_is_generic_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    context = _Context()
    with (
        caplog.at_level(logging.ERROR, logger="bnserve.server.plane.errors"),
        pytest.raises(_Aborted),
    ):
        _Servicer(KeyError("secret internals")).Unary(None, context)
    assert context.code == grpc.StatusCode.INTERNAL
    assert context.details == INTERNAL_MESSAGE and "secret" not in context.details
    assert "unexpected error in _Servicer.Unary" in caplog.text
    assert "KeyError: 'secret internals'" in caplog.text  # the traceback, for the operator


def test_a_streaming_method_needs_the_streaming_wrapper() -> None:
    """translate_errors would return the generator unwrapped: its errors would escape."""

    def Stream(self: object, request: object, context: object) -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="translate_stream_errors"):
        translate_errors(Stream)
