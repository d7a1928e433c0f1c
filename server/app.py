"""The Server: owns the gRPC server, the model repository, health and reflection.

Lifecycle: `Server.create(settings)` builds and binds (so `port` is known), `start()` starts
answering and loads the configured model, `stop(grace_s)` drains and closes.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bnserve.server.drift.metrics import DriftCollector
from bnserve.server.grpc.executor import MessageFirstExecutor
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.grpc.reflection import SERVICE_NAMES as REFLECTION_SERVICE_NAMES
from bnserve.server.grpc.reflection import enable_reflection
from bnserve.server.grpc.servicers import native, v2
from bnserve.server.grpc.servicers.unimplemented import UnimplementedHandler
from bnserve.server.grpc.servicers.v2 import server_version
from bnserve.server.models.reload import ReloadPolicy, VersionManager
from bnserve.server.models.repository import ModelRepository
from bnserve.server.models.servable import build_servable
from bnserve.server.models.versions import ModelSource, resolve_sources
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.observability.tracing import Tracing
from bnserve.server.plane.admission import InflightLimiter
from bnserve.server.plane.dataplane import DataPlane
from bnserve.server.rest.server import RestServer
from bnserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAMES = (native.SERVICE_NAME, v2.SERVICE_NAME)
OVERALL = ""  # the health service's name for the server as a whole: readiness
# Liveness under its own name: SERVING from the moment the server answers until shutdown,
# whatever the models do, so an orchestrator restarts a hung process, not one whose model
# failed to load (that one stays up, unready, with the reason in its log and answers).
LIVENESS = "liveness"


def listen_address(host: str, port: int) -> str:
    """host:port for grpc, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class Server:
    """A bnserve gRPC server. Extra interceptors (auth, metrics) go in at `create`."""

    def __init__(
        self,
        settings: ServerSettings,
        grpc_server: grpc.Server,
        repository: ModelRepository,
        health_servicer: health.HealthServicer | None,
        limiter: InflightLimiter,
        port: int,
        metrics: ServerMetrics | None = None,
        sources: Sequence[ModelSource] = (),
        plane: DataPlane | None = None,
        http: RestServer | None = None,
        pool: MessageFirstExecutor | None = None,
    ) -> None:
        self.settings = settings
        self.plane = plane if plane is not None else DataPlane(repository, limiter)
        self.http = http  # the HTTP/REST transport, None when --http-port 0
        self.http_port = http.port if http is not None else None
        self.pool = pool  # the grpc server's threads; its `waiting` holds calls not yet read
        self.repository = repository
        self.limiter = limiter
        self.port = port
        self.metrics = metrics
        self._grpc_server = grpc_server
        self._health = health_servicer
        self._draining = False  # set by drain(): readiness stays NOT_SERVING whatever reloads do
        self.versions = VersionManager(
            sources,
            lambda path, name, version: build_servable(path, name, version, settings, metrics),
            repository,
            ReloadPolicy(
                settings.max_versions, settings.reload_settle_s, settings.reload_interval_s
            ),
            model_root=settings.model_root,
            on_change=self.update_health,
            metrics=metrics,
        )
        if settings.model_control:  # cli refuses it without bearer tokens
            self.plane.rescan = self.versions.scan

    @classmethod
    def create(
        cls,
        settings: ServerSettings,
        *,
        sources: Sequence[ModelSource] | None = None,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        repository: ModelRepository | None = None,
        credentials: grpc.ServerCredentials | None = None,
        metrics: ServerMetrics | None = None,
        http_auth: Callable[[str | None], bool] | None = None,
        http_tls: ssl.SSLContext | None = None,
        tracing: Tracing | None = None,
        reuse_port: bool = False,
    ) -> Server:
        """Build the gRPC server with every service and bind the port (not started yet); TLS
        when credentials are given; reuse_port shares the gRPC and HTTP ports with the other
        processes of a supervisor (server/process/supervisor.py), which holds them against
        anyone else. sources: the models to serve; None: those settings.model, name,
        model_version and model_root name (as `bnserve serve` resolves them). Raises
        ModelPathError (a ValueError) for bad model paths, OSError for a port it cannot bind."""
        if sources is None:
            sources = resolve_sources(
                settings.model, settings.name, settings.model_version, settings.model_root
            )
        repository = repository if repository is not None else ModelRepository()
        if metrics is not None and settings.drift:
            metrics.registry.register(DriftCollector(repository))
        limiter = InflightLimiter(settings.max_inflight)
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # A second server on the same port must fail, not share (a supervisor's children
            # share it: the supervisor's own reservation keeps everyone else out).
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ]
        pool = MessageFirstExecutor(
            settings.workers,
            settings.stream_workers,
            settings.request_timeout_s,
            settings.max_waiting_calls,
            settings.stream_idle_timeout_s,
        )
        if metrics is not None:
            metrics.watch_waiting_calls(pool.waiting)
        grpc_server = grpc.server(
            pool,
            interceptors=list(interceptors),
            options=options,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        )
        plane = DataPlane(repository, limiter)
        plane.tracing = tracing
        predictor_pb2_grpc.add_PredictorServicer_to_server(
            native.PredictorServicer(plane), grpc_server
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            v2.InferenceServicer(plane), grpc_server
        )
        health_servicer = None
        service_names = list(SERVICE_NAMES)
        if settings.health:
            health_servicer = health.HealthServicer(
                experimental_non_blocking=True,
                experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2),
            )
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
            service_names.append(health.SERVICE_NAME)
            for name in (OVERALL, *SERVICE_NAMES):
                health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.NOT_SERVING)
        if settings.reflection:
            enable_reflection(service_names, grpc_server)
            service_names.extend(REFLECTION_SERVICE_NAMES)
        grpc_server.add_generic_rpc_handlers([UnimplementedHandler(service_names)])
        address = listen_address(settings.host, settings.port)
        try:
            if credentials is not None:
                port = grpc_server.add_secure_port(address, credentials)
            else:
                port = grpc_server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(
                f"cannot listen on {address} (in use, or not a local address?): {error}"
            ) from None
        if port == 0:
            raise OSError(f"cannot listen on {address} (in use, or not a local address?)")
        http = None
        if settings.http_port:  # the same data plane, tokens and certificates as gRPC
            http = RestServer(
                plane,
                settings.host,
                settings.http_port,
                max_body_bytes=settings.max_message_bytes,
                server_version=server_version(),
                accepts=http_auth,
                tls=http_tls,
                metrics=metrics,
                workers=settings.max_inflight,
                reuse_port=reuse_port,
            )
        return cls(
            settings,
            grpc_server,
            repository,
            health_servicer,
            limiter,
            port,
            metrics,
            sources,
            plane,
            http,
            pool,
        )

    def start(self, load_before_listening: bool = False) -> None:
        """Answer calls (liveness at once), then load the configured model; health says SERVING
        only once every configured model is loaded, warmed up and past its parity gate.
        load_before_listening (a supervised process sharing the port): load first, so the
        kernel hands this process no connection before its models are ready or failed."""
        if load_before_listening:
            self.versions.scan(initial=True)
        self._grpc_server.start()
        if self.http is not None:
            self.http.start()
        if self._health is not None:
            self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening on %s", listen_address(self.settings.host, self.port))
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
        """Health SERVING exactly when the repository is ready and the server is not draining."""
        if self._health is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.repository.ready and not self._draining
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (OVERALL, *SERVICE_NAMES):
            self._health.set(name, status)

    def drain(self) -> None:
        """Readiness NOT_SERVING from now on (liveness stays SERVING); calls are still answered,
        so load balancers can take this server out before `stop` refuses anything."""
        self._draining = True
        self.plane.draining = True
        self.update_health()

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, give in-flight ones grace_s, close the models."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        self.versions.stop()
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        self.plane.draining = True
        http_stop = None
        if self.http is not None:  # both transports drain at once, each within grace
            http_stop = threading.Thread(target=self.http.stop, args=(grace,), name="http-stop")
            http_stop.start()
        started = time.monotonic()
        if self.pool is not None:
            # Refuse new calls with UNAVAILABLE ourselves until the accepted unary calls are
            # done and callers have gone quiet (`wait_until_quiet` says why); streams then get
            # what is left of the grace.
            self.pool.refuse_new_calls()
            self.pool.wait_until_quiet(grace)
        self._grpc_server.stop(max(0.0, grace - (time.monotonic() - started))).wait()
        if http_stop is not None:
            http_stop.join()
        for name in self.repository.names():
            for version in self.repository.versions(name):
                servable = self.repository.remove(name, version)
                if servable is not None:
                    servable.close()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (True) or timeout_s passes (False)."""
        stopped: bool = self._grpc_server.wait_for_termination(timeout_s)
        return stopped
