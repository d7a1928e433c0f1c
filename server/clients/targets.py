"""What a client says when its --target cannot be reached: nothing listening, no port, a URL, the
HTTP/REST port. A failure to connect is the client's problem (exit 2), not the server's answer."""

from __future__ import annotations

import os
import re

import grpc

from bnserve.server.settings import ENV_PREFIX, ServerSettings

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
# grpc-core's words for "no HTTP/2 server at the other end" (checked with grpcio 1.85)
_NOT_CONNECTED = ("failed to connect", "connection refused", "dns resolution failed")
_NOT_HTTP2 = "failed parsing http/2"
_CLOSED = "socket closed"  # TLS on one side only: the server hangs up at the first bytes


class TargetError(ValueError):
    """--target is unusable or unreachable; the message says why and what to give instead."""


def serve_port() -> int:
    """The port a plain `bnserve serve` listens on here: BNSERVE_PORT if set, else the default."""
    configured = os.environ.get(f"{ENV_PREFIX}PORT", "").strip()
    return int(configured) if configured.isdigit() else ServerSettings.port


def check_target(target: str) -> None:
    """Refuse a URL up front: gRPC targets are HOST:PORT (or grpc's own `dns:///HOST:PORT`)."""
    if _URL.match(target) and not target.lower().startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        host = _URL.sub("", target).split("/", 1)[0].rsplit(":", 1)[0]
        raise TargetError(
            f"--target {target!r} is a URL; give the gRPC server's HOST:PORT, not an HTTP "
            f"address (e.g. --target {host}:{serve_port()}, bnserve serve's default port)"
        )


def has_port(target: str) -> bool:
    """Whether HOST:PORT names a port ([::1]:50051 and a bare ::1 are told apart)."""
    if target.startswith("["):
        return "]:" in target
    return target.count(":") == 1 and target.rsplit(":", 1)[1].isdigit()


def connection_failure(target: str, error: grpc.RpcError) -> str | None:
    """The one-line reason when error means the call never reached a gRPC server's handlers;
    None when the server itself answered (its status is then the answer, exit 1)."""
    code, details = error.code(), (error.details() or "")
    lowered = details.lower()
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    if _NOT_HTTP2 in lowered:
        return (
            f"{target} does not speak gRPC (the reply was not HTTP/2: {details}); is it the "
            f"HTTP/REST or metrics port? bnserve predict needs the server's gRPC port "
            f"(--port, default {serve_port()})"
        )
    if not any(words in lowered for words in _NOT_CONNECTED):
        return None
    if not has_port(target):
        return (
            f"nothing is listening at {target}: with no port gRPC uses 443; bnserve serve "
            f"listens on {serve_port()} by default (--target {target}:{serve_port()})"
        )
    if "connection refused" in lowered:
        return f"nothing is listening at {target} (is `bnserve serve` running there?): {details}"
    if _CLOSED in lowered:
        return (
            f"{target} closed the connection before any answer: a TLS server reached without "
            f"--tls-ca, or a plaintext one with it? ({details})"
        )
    return f"cannot connect to {target}: {details}"
