"""What `bnserve serve` adds around a Server for operators: metrics, the call observer, token
auth, TLS.

Built from the settings in one place, so a bad TLS file or token file is reported before the
port is bound, and in-process test servers (which pass none of it) stay plain.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from bnserve.server.app import Extras
from bnserve.server.grpc.decoding import RequestDecodingInterceptor
from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.observability.tracing import Tracing
from bnserve.server.security.auth import TokenAuthInterceptor, load_token_digests
from bnserve.server.security.tls import server_credentials, ssl_context
from bnserve.server.settings import ServerSettings


@dataclass
class Operations:
    """The call observer (metrics, access log, spans), token auth, TLS for both ports, and the
    pieces signal handlers and shutdown need."""

    metrics: ServerMetrics | None
    token_auth: TokenAuthInterceptor | None
    credentials: grpc.ServerCredentials | None
    http_tls: ssl.SSLContext | None
    settings: ServerSettings
    environ: Mapping[str, str]
    tracing: Tracing | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings, environ: Mapping[str, str]) -> Operations:
        """Raises ValueError (TlsConfigError, TokenConfigError) naming the bad file or variable,
        or saying that model control needs tokens."""
        credentials = server_credentials(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca
        )
        http_tls = ssl_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        token_digests = load_token_digests(settings.auth_token_file, environ)
        if settings.model_control and not token_digests:
            raise ValueError(
                "--model-control needs bearer tokens (--auth-token-file or BNSERVE_AUTH_TOKEN): "
                "no unauthenticated remote model loading"
            )
        token_auth = TokenAuthInterceptor(token_digests) if token_digests else None
        metrics = ServerMetrics() if settings.metrics_port else None
        tracing = Tracing.to_collector(settings.otlp_endpoint) if settings.otlp_endpoint else None
        return cls(metrics, token_auth, credentials, http_tls, settings, environ, tracing)

    def extras(self, reuse_port: bool) -> Extras:
        """The Server's extras: gRPC interceptors (auth before request decoding, so no
        unauthenticated bytes are parsed; the observer's goes outermost), the same tokens and
        certificates for HTTP, and the observer when anything is observed."""
        interceptors: list[grpc.ServerInterceptor] = []
        if self.token_auth is not None:
            interceptors.append(self.token_auth)
        interceptors.append(RequestDecodingInterceptor())
        observed = self.metrics, self.settings.access_log_sample, self.tracing
        return Extras(
            interceptors=interceptors,
            credentials=self.credentials,
            http_auth=self.token_auth.accepts if self.token_auth is not None else None,
            http_tls=self.http_tls,
            metrics=self.metrics,
            observer=CallObserver(*observed) if observed != (None, 0, None) else None,
            reuse_port=reuse_port,
        )

    def reload_tokens(self) -> None:
        """Re-read the token sources (SIGHUP); raises TokenConfigError and keeps the old ones
        if they are now unusable. Turning auth on or off needs a restart."""
        if self.token_auth is not None:
            self.token_auth.replace_tokens(
                load_token_digests(self.settings.auth_token_file, self.environ)
            )

    def serve_metrics(self) -> int | None:
        """Open the /metrics endpoint; returns its port (None when metrics are off)."""
        if self.metrics is None:
            return None
        return self.metrics.serve(self.settings.host, self.settings.metrics_port)

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes the spans not yet exported
