"""What `bnserve serve` adds around a Server for operators: metrics, token auth, TLS.

Built from the settings in one place, so a bad TLS file or token file is reported before the
port is bound, and in-process test servers (which pass none of it) stay plain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from bnserve.server.grpc.decoding import RequestDecodingInterceptor
from bnserve.server.observability.calls import ObservabilityInterceptor
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.observability.tracing import Tracing
from bnserve.server.security.auth import TokenAuthInterceptor, load_token_digests
from bnserve.server.security.tls import server_credentials
from bnserve.server.settings import ServerSettings


@dataclass
class Operations:
    """Interceptors (metrics outermost, so refused calls are counted too; request decoding
    innermost, after auth, so no unauthenticated bytes are parsed), TLS credentials, and
    the pieces signal handlers and shutdown need."""

    metrics: ServerMetrics | None
    token_auth: TokenAuthInterceptor | None
    credentials: grpc.ServerCredentials | None
    settings: ServerSettings
    environ: Mapping[str, str]
    tracing: Tracing | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings, environ: Mapping[str, str]) -> Operations:
        """Raises ValueError (TlsConfigError, TokenConfigError) naming the bad file or variable."""
        credentials = server_credentials(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca
        )
        token_digests = load_token_digests(settings.auth_token_file, environ)
        token_auth = TokenAuthInterceptor(token_digests) if token_digests else None
        metrics = ServerMetrics() if settings.metrics_port else None
        tracing = Tracing.to_collector(settings.otlp_endpoint) if settings.otlp_endpoint else None
        return cls(metrics, token_auth, credentials, settings, environ, tracing)

    @property
    def interceptors(self) -> list[grpc.ServerInterceptor]:
        interceptors: list[grpc.ServerInterceptor] = []
        observed = self.metrics, self.settings.access_log_sample, self.tracing
        if observed != (None, 0, None):
            interceptors.append(ObservabilityInterceptor(*observed))
        if self.token_auth is not None:
            interceptors.append(self.token_auth)
        interceptors.append(RequestDecodingInterceptor())
        return interceptors

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
