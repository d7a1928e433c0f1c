"""The gRPC transport: the native and v2 services over the data plane, health, reflection and
the catch-all UNIMPLEMENTED handler, on grpcio's sync server with the message-first pool.

A peer of the HTTP transport (server/rest/server.py): both are built around one DataPlane by
the composition root (server/app.py) and have the same `bind`, `start`, `drain`, `stop`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bnserve.server._compat import grpc_internals_problem
from bnserve.server.grpc.executor import MessageFirstExecutor
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.grpc.observing import ObservabilityInterceptor
from bnserve.server.grpc.reflection import SERVICE_NAMES as REFLECTION_SERVICE_NAMES
from bnserve.server.grpc.reflection import enable_reflection
from bnserve.server.grpc.servicers import native, v2
from bnserve.server.grpc.servicers.unimplemented import UnimplementedHandler
from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.dataplane import DataPlane
from bnserve.server.settings import ServerSettings
from bnserve.server.shutdown import stop_reserve_s

log = logging.getLogger(__name__)

SERVICE_NAMES = (native.SERVICE_NAME, v2.SERVICE_NAME)
OVERALL = ""  # the health service's name for the server as a whole: readiness
# Liveness under its own name: SERVING from the moment the server answers until shutdown,
# whatever the models do, so an orchestrator restarts a hung process, not one whose model
# failed to load (that one stays up, unready, with the reason in its log and answers).
LIVENESS = "liveness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def listen_address(host: str, port: int) -> str:
    """host:port for grpc, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass(frozen=True)
class GrpcOptions:
    """What the gRPC transport takes besides the settings and the data plane (all optional).

    interceptors run inside the observer's (auth, request decoding); credentials: TLS;
    reuse_port shares the port with the other processes of a supervisor
    (server/process/supervisor.py), which holds it against anyone else."""

    interceptors: Sequence[grpc.ServerInterceptor] = ()
    credentials: grpc.ServerCredentials | None = None
    observer: CallObserver | None = None
    metrics: ServerMetrics | None = None
    reuse_port: bool = False


def _server_options(settings: ServerSettings, reuse_port: bool) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # A second server on the same port must fail, not share (a supervisor's children
        # share it: the supervisor's own reservation keeps everyone else out).
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
    ]
    if settings.grpc_max_connection_idle_s:
        idle_ms = int(settings.grpc_max_connection_idle_s * 1000)
        options.append(("grpc.max_connection_idle_ms", idle_ms))
    if settings.grpc_max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000)),
        ]
    return options


def _pool(settings: ServerSettings) -> MessageFirstExecutor | None:
    """The stall-protected pool, or None for grpcio's own (--allow-unpinned-grpcio on a grpcio it
    was not checked against). Raises UnpinnedGrpcio (a ValueError) otherwise."""
    problem = grpc_internals_problem()
    if problem is not None and settings.allow_unpinned_grpcio:
        log.warning(
            "%s: serving WITHOUT the protection against stalled calls (--allow-unpinned-grpcio); "
            "a client that opens `workers` calls and never sends their message holds every "
            "thread. bnserve_grpc_stall_protection reads 0",
            problem,
        )
        return None
    return MessageFirstExecutor(
        settings.workers,
        settings.stream_workers,
        settings.request_timeout_s,
        settings.max_waiting_calls,
        settings.stream_idle_timeout_s,
    )


class GrpcTransport:
    """Built around a data plane with every service; `bind` takes the port, `start` answers,
    `drain` turns readiness off, `stop(grace_s)` refuses new calls and finishes the rest."""

    def __init__(self, settings: ServerSettings, plane: DataPlane, options: GrpcOptions) -> None:
        self._settings = settings
        self._plane = plane
        self._credentials = options.credentials
        # The server's threads; its `waiting` holds calls whose message has not arrived.
        self.pool = _pool(settings)
        if options.metrics is not None:
            if self.pool is not None:
                options.metrics.watch_waiting_calls(self.pool.waiting)
            options.metrics.watch_stall_protection(
                self.pool.stock_path if self.pool is not None else None
            )
        interceptors = list(options.interceptors)
        if options.observer is not None:  # outermost: calls refused by auth are observed too
            interceptors.insert(0, ObservabilityInterceptor(options.observer))
        self._server = grpc.server(
            self.pool if self.pool is not None else futures.ThreadPoolExecutor(settings.workers),
            interceptors=interceptors,
            options=_server_options(settings, options.reuse_port),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        )
        self._health = self._add_services()
        self.port = 0  # known after bind()

    def _add_services(self) -> health.HealthServicer | None:
        """Register the services (health NOT_SERVING until start); the health servicer."""
        predictor_pb2_grpc.add_PredictorServicer_to_server(
            native.PredictorServicer(self._plane), self._server
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            v2.InferenceServicer(self._plane), self._server
        )
        health_servicer = None
        service_names = list(SERVICE_NAMES)
        if self._settings.health:
            health_servicer = health.HealthServicer(
                experimental_non_blocking=True,
                experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2),
            )
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._server)
            service_names.append(health.SERVICE_NAME)
            for name in (OVERALL, *SERVICE_NAMES, LIVENESS):
                health_servicer.set(name, _NOT_SERVING)
        if self._settings.reflection:
            enable_reflection(service_names, self._server)
            service_names.extend(REFLECTION_SERVICE_NAMES)
        self._server.add_generic_rpc_handlers([UnimplementedHandler(service_names)])
        return health_servicer

    def bind(self) -> int:
        """Listen on the settings' host and port (TLS with credentials); the port bound.
        Raises OSError for a port it cannot bind."""
        address = listen_address(self._settings.host, self._settings.port)
        try:
            if self._credentials is not None:
                port = self._server.add_secure_port(address, self._credentials)
            else:
                port = self._server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(
                f"cannot listen on {address} (in use, or not a local address?): {error}"
            ) from None
        if port == 0:
            raise OSError(f"cannot listen on {address} (in use, or not a local address?)")
        self.port = int(port)
        return self.port

    def start(self) -> None:
        """Answer calls; liveness SERVING at once, readiness as `update_health` says."""
        self._server.start()
        if self._health is not None:
            self._health.set(LIVENESS, _SERVING)
        log.info("listening on %s", listen_address(self._settings.host, self.port))

    def update_health(self) -> None:
        """Readiness SERVING exactly when the data plane is ready (models loaded, not
        draining)."""
        if self._health is None:
            return
        status = _SERVING if self._plane.ready else _NOT_SERVING
        for name in (OVERALL, *SERVICE_NAMES):
            self._health.set(name, status)

    def drain(self) -> None:
        """Readiness NOT_SERVING (the data plane drains first); calls are still answered."""
        self.update_health()

    def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING for good, refuse new calls, give in-flight ones grace_s: new
        calls are held while the accepted ones finish, grpc's stop sends GOAWAY, then the held
        calls are answered UNAVAILABLE (server/shutdown.py), so grpc's stop never has to cancel
        one; streams get what is left of the grace."""
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace_s
        if self.pool is not None:
            self.pool.refuse_new_calls()
            self.pool.wait_until_quiet(max(0.0, grace_s - stop_reserve_s(grace_s)))
        stopped = self._server.stop(max(0.0, deadline - time.monotonic()))
        if self.pool is not None:  # grpc's GOAWAY is out: callers' retries go elsewhere
            held = self.pool.release_held_calls()
            if held:
                log.info("shutdown: %d call(s) held during the drain answered UNAVAILABLE", held)
        stopped.wait()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (True) or timeout_s passes (False)."""
        stopped: bool = self._server.wait_for_termination(timeout_s)
        return stopped
