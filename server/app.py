"""The composition root: the Server builds the data plane once, hands it to each transport
(gRPC always, HTTP/REST when settings.http_port), and owns the order of start-up and shutdown.

Lifecycle: `Server.create(settings)` builds and binds (so `port` is known), `start()` starts
answering and loads the configured models, `drain()` turns readiness off, `stop(grace_s)`
finishes in-flight calls on every transport at once and closes the models.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from bnserve.server.capture.metrics import CaptureMetrics, QualityCollector
from bnserve.server.capture.service import Capture
from bnserve.server.capture.writer import CaptureOptions
from bnserve.server.drift.metrics import DriftCollector
from bnserve.server.grpc.executor import MessageFirstExecutor
from bnserve.server.grpc.transport import GrpcOptions, GrpcTransport
from bnserve.server.models.reload import ReloadPolicy, VersionManager
from bnserve.server.models.repository import ModelRepository
from bnserve.server.models.servable import Servable, build_servable
from bnserve.server.models.versions import ModelSource, resolve_sources
from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.admission import InflightLimiter
from bnserve.server.plane.dataplane import DataPlane
from bnserve.server.rest.server import RestOptions, RestTransport
from bnserve.server.settings import ServerSettings
from bnserve.server.shutdown import stop_reserve_s


@dataclass(frozen=True)
class Extras:
    """What a server takes besides its settings, all optional (an in-process test server passes
    none; `bnserve serve` builds them in server/operations.py).

    interceptors: gRPC interceptors inside the observer's (auth, request decoding);
    credentials: gRPC TLS; http_auth: whether an HTTP bearer token (None: none sent) is good;
    http_tls: HTTPS; metrics: the registry models and pools report to; observer: metrics,
    access log and spans of every call on both transports; reuse_port: share the gRPC and
    HTTP ports with a supervisor's other processes; repository: the models (None: a new,
    empty one)."""

    interceptors: Sequence[grpc.ServerInterceptor] = ()
    credentials: grpc.ServerCredentials | None = None
    http_auth: Callable[[str | None], bool] | None = None
    http_tls: ssl.SSLContext | None = None
    metrics: ServerMetrics | None = None
    observer: CallObserver | None = None
    reuse_port: bool = False
    repository: ModelRepository | None = None


def capture_of(settings: ServerSettings, metrics: ServerMetrics | None) -> Capture | None:
    """The capture store --capture-dir names (None: off), its counters and quality gauges in
    metrics' registry (a supervised process's gauges are the supervisor's: it joins the store
    itself)."""
    if not settings.capture_dir:
        return None
    options = CaptureOptions(
        Path(settings.capture_dir),
        settings.capture_sample,
        settings.capture_max_bytes,
        settings.capture_rotate_s,
    )
    counters = CaptureMetrics(metrics.registry) if metrics is not None else None
    capture = Capture(options, settings.quality_recent_s, settings.feedback_window_s, counters)
    capture.prepare()  # OSError: Server.create's callers report it as a start-up error
    # A supervised process (prometheus-client's multiprocess mode) leaves the gauges to the
    # supervisor's /metrics, which joins the same store (server/process/supervisor.py).
    if metrics is not None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics.registry.register(QualityCollector(capture.joiner))
    return capture


class Server:
    """The data plane, its model versions and its transports, started and stopped in order."""

    def __init__(
        self, settings: ServerSettings, sources: Sequence[ModelSource], extras: Extras
    ) -> None:
        """Build everything; nothing listens yet (`create` binds)."""
        self.settings = settings
        self.metrics = extras.metrics
        self.repository = extras.repository or ModelRepository()
        if self.metrics is not None and settings.drift:
            self.metrics.registry.register(DriftCollector(self.repository))
        self.capture = capture_of(settings, self.metrics)
        self.versions = VersionManager(
            sources,
            self._load_servable,
            self.repository,
            ReloadPolicy(
                settings.max_versions, settings.reload_settle_s, settings.reload_interval_s
            ),
            model_root=settings.model_root,
            on_change=self.update_health,
            metrics=self.metrics,
        )
        self.plane = DataPlane(
            self.repository,
            InflightLimiter(settings.max_inflight),
            tracing=extras.observer.tracing if extras.observer is not None else None,
            # cli refuses model control without bearer tokens
            rescan=self.versions.scan if settings.model_control else None,
            capture=self.capture,
        )
        self.grpc = GrpcTransport(
            settings,
            self.plane,
            GrpcOptions(
                extras.interceptors,
                extras.credentials,
                extras.observer,
                extras.metrics,
                extras.reuse_port,
            ),
        )
        self.http: RestTransport | None = None  # None when --http-port 0
        if settings.http_port:  # the same data plane, tokens and certificates as gRPC
            self.http = RestTransport(
                settings,
                self.plane,
                RestOptions(
                    extras.http_auth,
                    extras.http_tls,
                    extras.observer,
                    extras.reuse_port,
                    extras.metrics,
                ),
            )

    @classmethod
    def create(
        cls,
        settings: ServerSettings,
        extras: Extras = Extras(),
        *,
        sources: Sequence[ModelSource] | None = None,
    ) -> Server:
        """Build the server and bind its ports (not started yet). sources: the models to serve;
        None: those settings.model, name, model_version and model_root name (as `bnserve serve`
        resolves them). Raises ModelPathError (a ValueError) for bad model paths, OSError for a
        port it cannot bind."""
        if sources is None:
            sources = resolve_sources(
                settings.model, settings.name, settings.model_version, settings.model_root
            )
        server = cls(settings, sources, extras)
        server.grpc.bind()
        if server.http is not None:
            server.http.bind()
        return server

    def _load_servable(self, path: Path, name: str, version: str) -> Servable:
        return build_servable(path, name, version, self.settings, self.metrics)

    # --- what tests and the CLI read -------------------------------------------------------

    @property
    def port(self) -> int:
        """The gRPC port bound."""
        return self.grpc.port

    @property
    def http_port(self) -> int | None:
        """The HTTP port bound, None without HTTP."""
        return self.http.port if self.http is not None else None

    @property
    def limiter(self) -> InflightLimiter:
        return self.plane.limiter

    @property
    def pool(self) -> MessageFirstExecutor | None:
        """The gRPC server's threads; its `waiting` holds calls not yet read (None: grpcio's
        own pool, --allow-unpinned-grpcio)."""
        return self.grpc.pool

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, load_before_listening: bool = False) -> None:
        """Answer calls (liveness at once), then load the configured model; readiness says
        SERVING only once every configured model is loaded, warmed up and past its parity gate.
        load_before_listening (a supervised process sharing the port): load first, so the
        kernel hands this process no connection before its models are ready or failed."""
        if self.capture is not None:
            self.capture.start()
        if load_before_listening:
            self.versions.scan(initial=True)
        self.grpc.start()
        if self.http is not None:
            self.http.start()
        if self.metrics is not None:
            for source in self.versions.sources:
                self.metrics.model_configured(source.name)
        if not load_before_listening:
            self.versions.scan(initial=True)
        if self.versions.sources:
            self.versions.start()
        self.update_health()

    def request_reload(self) -> None:
        """Scan the model directories now (SIGHUP); safe from a signal handler."""
        self.versions.request_scan()

    def update_health(self) -> None:
        """gRPC health follows the data plane's readiness (HTTP's ready endpoint reads it)."""
        self.grpc.update_health()

    def drain(self) -> None:
        """Readiness NOT_SERVING from now on (liveness stays SERVING); calls are still answered,
        so load balancers can take this server out before `stop` refuses anything."""
        self.plane.drain()
        self.grpc.drain()
        if self.http is not None:
            self.http.drain()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop reloading, drain, give in-flight calls grace_s on both transports at once (each
        refuses new calls), then close the models."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        self.versions.stop()
        self.plane.drain()
        http_stop = None
        if self.http is not None:
            http_stop = threading.Thread(
                target=self.http.stop, args=(grace, stop_reserve_s(grace)), name="http-stop"
            )
            http_stop.start()
        self.grpc.stop(grace)
        if http_stop is not None:
            http_stop.join()
        if self.capture is not None:
            self.capture.stop()  # what the answered calls offered, written and renamed in
        for name in self.repository.names():
            for version in self.repository.versions(name):
                servable = self.repository.remove(name, version)
                if servable is not None:
                    servable.close()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (True) or timeout_s passes (False)."""
        return self.grpc.wait_for_termination(timeout_s)
