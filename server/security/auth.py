"""Optional bearer-token authentication from gRPC metadata `authorization: Bearer <token>`.

Tokens come from a file (one per line; blank lines and `#` comments skipped; several allow
rotation) and/or the environment variable BNSERVE_AUTH_TOKEN. Only their sha256 digests are
kept, every presented token is compared with every accepted one in constant time, and no token
is ever logged. Health checks stay open (Kubernetes probes send no metadata); everything else,
reflection included, needs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from bnserve.server.grpc.interceptors import Continuation, HandlerWrappers, replace_behavior
from bnserve.server.grpc.servicers.unimplemented import is_unimplemented
from bnserve.server.observability.logs import LogThrottle

log = logging.getLogger(__name__)

TOKEN_ENV = "BNSERVE_AUTH_TOKEN"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
REFUSAL_LOG_INTERVAL_S = 10.0  # at most one "refused" line per method and reason this often
DENIED_MESSAGE = (
    "missing or invalid bearer token: send gRPC metadata 'authorization: Bearer <token>' "
    "with a token the server accepts"
)


class TokenConfigError(ValueError):
    """The token file or variable cannot be used; the message names which and why."""


def load_token_digests(token_file: str, environ: Mapping[str, str]) -> tuple[bytes, ...]:
    """sha256 digests of the accepted tokens; empty when neither source is configured."""
    tokens: list[str] = []
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            message = f"auth token file {token_file}: cannot read it ({error})"
            raise TokenConfigError(message) from None
        for number, line in enumerate(lines, start=1):
            token = line.strip()
            if token and not token.startswith("#"):
                _check_token(token, f"auth token file {token_file} line {number}")
                tokens.append(token)
        if not tokens:
            raise TokenConfigError(f"auth token file {token_file} holds no token")
    env_token = environ.get(TOKEN_ENV, "").strip()
    if env_token:
        _check_token(env_token, f"environment variable {TOKEN_ENV}")
        tokens.append(env_token)
    return tuple(_digest(token) for token in tokens)


def _check_token(token: str, where: str) -> None:
    if len(token) < 16 or any(c.isspace() for c in token) or not token.isprintable():
        raise TokenConfigError(
            f"{where}: a token must be at least 16 printable characters without spaces "
            "(e.g. `openssl rand -hex 32`)"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of the first `authorization: Bearer …` metadata entry, or None."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED, before the request is even parsed, to calls without a valid
    token (except health checks)."""

    def __init__(self, token_digests: Sequence[bytes]) -> None:
        self._token_digests = tuple(token_digests)
        self._denying = HandlerWrappers(_denying_handler)
        # A client can send refused calls as fast as it likes: log them, not each of them.
        self._refusal_lines = LogThrottle(REFUSAL_LOG_INTERVAL_S)

    def replace_tokens(self, token_digests: Sequence[bytes]) -> None:
        """Accept these tokens from now on (rotation on SIGHUP)."""
        self._token_digests = tuple(token_digests)

    def accepts(self, token: str | None) -> bool:
        """True when token matches an accepted one; compares against all, in constant time."""
        if token is None:
            return False
        presented = _digest(token)
        matched = False
        for accepted in self._token_digests:
            matched |= hmac.compare_digest(presented, accepted)
        return matched

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        # Methods nobody serves answer UNIMPLEMENTED whatever the token: refused here, a client
        # inventing names would add a metric label and a log-throttle key per name.
        if handler is None or is_unimplemented(handler) or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if self.accepts(token):
            return handler
        reason = "no bearer token" if token is None else "a token that is not accepted"
        held_back = self._refusal_lines.admit((method, reason))
        if held_back is not None:
            more = f" ({held_back} more since the last such line)" if held_back else ""
            log.warning("refused %s: %s (UNAUTHENTICATED)%s", method, reason, more)
        return self._denying.of(handler, method)


def _deny(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED_MESSAGE)


def _deny_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED_MESSAGE)
    yield  # pragma: no cover  (makes this a generator, as a streaming handler must be)


def _denying_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that aborts at once; requests are left unparsed."""
    deny = _deny_stream if handler.response_streaming else _deny
    return replace_behavior(handler, lambda _behavior: deny, request_deserializer=None)
