"""Client side of TLS and tokens: a channel to a bnserve server as `bnserve predict` opens it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc


class ConnectError(ValueError):
    """A client TLS or token file cannot be used; the message names the file."""


def read_token(token_file: str, env_token: str) -> str:
    """The bearer token from token_file (its first non-comment line), else env_token."""
    if not token_file:
        return env_token.strip()
    try:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConnectError(f"token file {token_file}: cannot read it ({error})") from None
    for line in lines:
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()
    raise ConnectError(f"token file {token_file} holds no token")


def open_channel(
    target: str, *, ca_file: str = "", cert_file: str = "", key_file: str = "", token: str = ""
) -> grpc.Channel:
    """A channel to target: TLS when ca_file is set (plus a client certificate when cert_file and
    key_file are), and `authorization: Bearer <token>` on every call when token is set."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(
            _read(ca_file),
            _read(key_file) if key_file else None,
            _read(cert_file) if cert_file else None,
        )
        channel = grpc.secure_channel(target, credentials)
    elif cert_file or key_file:
        raise ConnectError("--tls-cert/--tls-key (a client certificate) need --tls-ca")
    else:
        channel = grpc.insecure_channel(target)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConnectError(f"{path}: cannot read it ({error.strerror})") from None


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the authorization metadata to every call (works on plaintext channels too, unlike
    grpc's call credentials)."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip

    def _intercept(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._with_token(details), request)

    intercept_unary_unary = _intercept
    intercept_unary_stream = _intercept
    intercept_stream_unary = _intercept
    intercept_stream_stream = _intercept


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
