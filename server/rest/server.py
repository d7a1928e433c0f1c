"""The HTTP transport: the Open Inference Protocol over HTTP/REST on --http-port, aiohttp on its
own event loop thread, calling the same data plane as the gRPC servicers. A peer of the gRPC
transport (server/grpc/transport.py), with the same `bind`, `start`, `drain`, `stop`.

aiohttp was chosen by measurement (docs/serving.md, HTTP/REST: an echo POST at concurrency 1 cost
about the same as uvicorn+httptools and ~90× less than the standard library's http.server,
which waits on delayed ACKs), and it is one well-kept package with TLS and keep-alive built in.
Its loop runs in one thread: calls of an unbatched model are scored inline (tens of µs, no thread
hop); calls that may wait for a dynamic batch go to a small thread pool so batch-mates can arrive.
While idle the loop sleeps in epoll and takes nothing from the gRPC threads.

Errors are {"error": "..."} with the status server/plane/errors.py's table gives each domain
error (400 bad input, 404 unknown model or version, 429 overloaded, 503 not ready, 504 timeout,
…) and the HTTP-only ones it lists (401 no valid token, 404 unknown path, 405 wrong method, 413
body too large, 408 body too slow); 500 only for a server fault. While the server stops, new
calls are held, then answered 503 (server/shutdown.py); connections are bounded in time and
number (server/rest/connections.py). Every call goes through the call observer
(server/observability/calls.py): metrics, access log and trace span, as over gRPC.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.observability.tracing import scored_at
from bnserve.server.plane.dataplane import (
    EXTENSIONS,
    INDEX_STATES,
    PLATFORM,
    SERVER_NAME,
    DataPlane,
)
from bnserve.server.plane.errors import (
    BODY_TIMEOUT,
    BODY_TOO_LARGE,
    INTERNAL,
    INTERNAL_MESSAGE,
    METHOD_NOT_ALLOWED,
    NO_ROUTE,
    OK,
    STATUS_BY_ERROR,
    STOPPING,
    UNAUTHENTICATED,
    InvalidInput,
    ModelNotReady,
    ServingError,
    Status,
    status_for,
)
from bnserve.server.plane.request_ids import request_id as call_id
from bnserve.server.rest import codec
from bnserve.server.rest.connections import Connections, Listener, connection_cap
from bnserve.server.rest.drain import Drain
from bnserve.server.rest.protocol_log import ProtocolLog
from bnserve.server.settings import ServerSettings
from bnserve.server.shutdown import RETRY_AFTER_S, SHUTTING_DOWN
from bnserve.server.version import installed_version

log = logging.getLogger(__name__)

DENIED = (
    "missing or invalid bearer token: send the header 'Authorization: Bearer <token>' with a "
    "token the server accepts"
)
JSON = "application/json"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # probes send no token
Handler = Callable[[web.Request], Awaitable[web.Response]]
# An infer call's id in and out (server/plane/request_ids.py): the body's "id" wins over the
# request header; the answer carries the id in its JSON and, when it is printable ASCII (always
# for a made id or a header's), in this header.
REQUEST_ID = "X-Request-Id"
_HEADER_SAFE = re.compile(r"[\x20-\x7e]{1,1024}")
STATUS = web.ResponseKey("status", Status)  # the answer's status on both transports
Result = TypeVar("Result")


def _finite_or_null(value: Any) -> Any:
    """value with every NaN or ±inf float (anywhere inside) replaced by None: JSON has none."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _error(status: Status, message: str, **headers: str) -> web.Response:
    response = web.Response(
        status=status.http, body=codec.dumps({"error": message}), content_type=JSON, headers=headers
    )
    response[STATUS] = status
    return response


def _json(value: Any, status: Status = OK) -> web.Response:
    response = web.Response(status=status.http, body=codec.dumps(value), content_type=JSON)
    response[STATUS] = status
    return response


@dataclass(frozen=True)
class RestOptions:
    """What the HTTP transport takes besides the data plane (all optional).

    accepts: whether a bearer token (None: none sent) is good, None: no auth; tls: HTTPS;
    reuse_port: share the port with a supervisor's other processes (the supervisor holds it
    against anyone else, server/process/supervisor.py)."""

    accepts: Callable[[str | None], bool] | None = None
    tls: ssl.SSLContext | None = None
    observer: CallObserver | None = None
    reuse_port: bool = False
    metrics: ServerMetrics | None = None  # for the connection gauges


class BodyTimeout(Exception):
    """A request body did not arrive within its deadline."""


class _HttpCall:
    """CallFacts of an HTTP call; infer fills in the model it asked for and answered."""

    __slots__ = ("_request", "answered", "answered_version", "asked", "id")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.asked = self.answered = self.answered_version = self.id = ""

    def asked_model(self) -> str:
        return self.asked

    def answered_model(self) -> str:
        return self.answered

    def version(self) -> str:
        return self.answered_version or self._request.match_info.get("version", "")

    def request_id(self) -> str:
        return self.id

    def peer(self) -> str:
        peer = (
            self._request.transport.get_extra_info("peername") if self._request.transport else None
        )
        if not peer:
            return ""
        host, port = peer[0], peer[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


CALL = web.RequestKey("call", _HttpCall)  # what the handler learnt of the call


class RestTransport:
    """Built around a data plane; `bind` takes the port, `start` serves, `drain` is readiness
    off (the ready endpoint reads the data plane), `stop(grace_s)` finishes in-flight calls."""

    def __init__(
        self, settings: ServerSettings, plane: DataPlane, options: RestOptions = RestOptions()
    ) -> None:
        """On settings.host and settings.http_port; bodies up to settings.max_message_bytes;
        up to settings.max_inflight calls on the thread pool (model scans, batched scoring)."""
        self._plane = plane
        self._accepts = options.accepts
        self._tls = options.tls
        self._reuse_port = options.reuse_port
        self._observer = options.observer
        self._metadata = {
            "name": SERVER_NAME,
            "version": installed_version(),
            "extensions": EXTENSIONS,
        }
        self._host, self._port = settings.host, settings.http_port
        self._socket: socket.socket | None = None
        self.port = 0  # known after bind()
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_inflight, thread_name_prefix="http"
        )
        self._max_body_bytes = settings.max_message_bytes
        self._grace_s = settings.grace_s  # aiohttp's shutdown_timeout: in-flight's last wait
        self._keepalive_timeout_s = settings.http_keepalive_timeout_s
        self._body_timeout_s = settings.request_timeout_s
        self._drain = Drain()
        self.connections = Connections(
            connection_cap(settings.http_max_connections, settings.grpc_fd_reserve),
            settings.http_header_timeout_s,
        )
        if options.metrics is not None:
            options.metrics.watch_http_connections(self.connections)
        self._listener: Listener | None = None
        self._app = web.Application(client_max_size=self._max_body_bytes)
        self._add_routes(self._app.router)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> int:
        """Listen on host and port (errors early, before anything starts); the port bound.
        Raises OSError naming --http-port."""
        self._socket = _bind(self._host, self._port, self._reuse_port)
        self.port = int(self._socket.getsockname()[1])
        return self.port

    def start(self) -> None:
        """Serve on the bound port from the loop thread; OSError if aiohttp cannot."""
        self._thread = threading.Thread(target=self._run, name="http-loop", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise OSError(f"HTTP server did not start: {self._start_error}")

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            runner = self._runner = web.AppRunner(
                self._app,
                access_log=None,
                logger=ProtocolLog(),  # malformed requests: one warning line, no traceback
                handle_signals=False,
                shutdown_timeout=self._grace_s,
                keepalive_timeout=self._keepalive_timeout_s,
            )
            loop.run_until_complete(runner.setup())
            sock, protocols = self._socket, runner.server  # aiohttp's protocol factory
            assert sock is not None and protocols is not None, "bind() before start()"

            # Our own listener (not a SockSite): each connection is counted from its accept
            # and goes through the registry (server/rest/connections.py) on its way to aiohttp.
            async def listen() -> Listener:
                return Listener(sock, self.connections, protocols, self._tls)

            self._listener = loop.run_until_complete(listen())
        except BaseException as error:  # reported to start()
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    def drain(self) -> None:
        """Nothing of its own: /v2/health/ready reads the data plane, which drains first."""

    def stop(self, grace_s: float, reserve_s: float = 0.0) -> None:
        """Drain, then close (server/shutdown.py): new requests are held (unanswered) while the
        in-flight ones finish and their clients' next requests are held too, at most grace_s -
        reserve_s; then the listening socket closes, the held requests are answered 503 with
        Retry-After and Connection: close (a retry meets a closed port: refused, never lost),
        and in-flight calls get what is left of the grace."""
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or self._thread is None:
            self._close_socket()
            return
        drain = self._drain

        async def shut_down() -> None:
            try:
                drain.begin()
                await drain.wait_until_quiet(max(0.0, grace_s - reserve_s))
                if self._listener is not None:
                    self._listener.close()  # new connections refused from now on
                held = drain.release()
                if held:
                    log.info(
                        "HTTP shutdown: %d request(s) held during the drain answered 503", held
                    )
                await runner.cleanup()  # idle keep-alive connections close; in-flight finish
            finally:
                loop.stop()

        done = asyncio.run_coroutine_threadsafe(shut_down(), loop)
        self._thread.join(grace_s + 10)
        if done.done() and done.exception() is not None:
            log.error("HTTP server shutdown: %s", done.exception())
        self._close_socket()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop = None

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()

    async def _in_thread(self, function: Callable[..., Result], *args: Any) -> Result:
        """function(*args) on the pool (it may wait: a model scan, batch-mates), in this call's
        context: its span parents the data plane's parts, and the scoring time comes back."""
        context = contextvars.copy_context()
        result = await asyncio.get_running_loop().run_in_executor(
            self._executor, context.run, function, *args
        )
        scored_at.set(context.get(scored_at, 0))
        return result

    # --- routing -----------------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/v2/health/live", self._live),
            ("GET", "/v2/health/ready", self._ready),
            ("GET", "/v2", self._server_metadata),
            ("GET", "/v2/models/stats", self._all_statistics),
            ("POST", "/v2/repository/index", self._repository_index),
            ("POST", "/v2/repository/models/{name}/load", self._model_load),
            ("POST", "/v2/repository/models/{name}/unload", self._model_unload),
        ]
        for prefix in (model, version):
            routes += [
                ("GET", prefix, self._model_metadata),
                ("GET", prefix + "/ready", self._model_ready),
                ("GET", prefix + "/config", self._model_config),
                ("GET", prefix + "/stats", self._model_statistics),
                ("GET", prefix + "/drift", self._model_drift),
                ("GET", prefix + "/quality", self._model_quality),
                ("POST", prefix + "/infer", self._infer),
            ]
        routes.append(("POST", model + "/feedback", self._feedback))
        for method, path, handler in routes:
            router.add_route(method, path, self._wrap(handler, path))
        self._allowed: list[tuple[re.Pattern[str], set[str]]] = []
        for method, path, _ in routes:
            pattern = re.compile(re.sub(r"\{\w+\}", "[^/]+", path) + "$")
            for known, methods in self._allowed:
                if known.pattern == pattern.pattern:
                    methods.add(method)
                    break
            else:
                self._allowed.append((pattern, {method}))
        router.add_route("*", "/{tail:.*}", self._wrap(self._no_route, "other"))

    def _wrap(self, handler: Handler, path: str) -> Handler:
        """Token check (except probes), error → status translation, the call observer."""
        accepts = self._accepts
        observer = self._observer
        max_body_bytes = self._max_body_bytes
        method = "HTTP " + path  # the metrics' method label and the span's name
        open_path = path in OPEN_PATHS
        drain, connections = self._drain, self.connections
        body_timeout_s = self._body_timeout_s

        async def answer(request: web.Request) -> web.Response:
            """Refused while the server stops; else checked, with the connection's state."""
            if drain.draining and await drain.hold(open_path):
                response = _error(STOPPING, SHUTTING_DOWN, **{"Retry-After": str(RETRY_AFTER_S)})
                response.force_close()  # Connection: close
                return response
            drain.entered()
            connections.request_started(request.transport)
            try:
                response = await checked(request)
            finally:
                drain.left()
                connections.request_finished(request.transport)
            if drain.draining:
                response.force_close()  # the client's next call goes elsewhere
            return response

        async def checked(request: web.Request) -> web.Response:
            if accepts is not None and not open_path and not accepts(_bearer(request)):
                return _error(UNAUTHENTICATED, DENIED, **{"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except ServingError as error:
                status = status_for(error)
                extra = {"Retry-After": "1"} if status.http == 429 else {}
                return _error(status, str(error), **extra)
            except BodyTimeout:
                response = _error(
                    BODY_TIMEOUT,
                    f"request body not received within {body_timeout_s:g} s (--request-timeout-s)",
                )
                response.force_close()
                return response
            except web.HTTPRequestEntityTooLarge:
                return _error(
                    BODY_TOO_LARGE,
                    f"request body over the {max_body_bytes}-byte limit (--max-message-bytes)",
                )
            except Exception:
                log.exception("unexpected error in %s %s", request.method, request.path)
                return _error(INTERNAL, INTERNAL_MESSAGE)

        if observer is None:
            return answer

        async def observed(request: web.Request) -> web.Response:
            headers = [(name.lower(), value) for name, value in request.headers.items()]
            with observer.span(method, headers, "http"):
                started = time.perf_counter()
                request[CALL] = facts = _HttpCall(request)
                response = await answer(request)
                status = response.get(STATUS, INTERNAL)
                seconds = time.perf_counter() - started
                observer.observe(method, status.grpc, seconds, facts, status.http)
            return response

        return observed

    # --- handlers ----------------------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self._plane.ready
        return _json({"ready": ready}, OK if ready else STATUS_BY_ERROR[ModelNotReady])

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return _json(self._metadata)

    async def _model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        model = self._plane.find(name, version).model
        return _json(
            {
                "name": model.name,
                "versions": self._plane.versions(model.name),
                "platform": PLATFORM,
                "inputs": [codec.tensor_metadata(spec) for spec in model.input_specs],
                "outputs": [codec.tensor_metadata(spec) for spec in model.output_specs],
            }
        )

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        if self._plane.model_ready(name, version):
            return _json({"name": name, "ready": True})
        self._plane.find(name, version)  # raises: unknown (404) or not ready (503)
        return _json({"name": name, "ready": False}, STATUS_BY_ERROR[ModelNotReady])

    async def _model_config(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        return _json(codec.model_config(self._plane.model_config(name, version)))

    async def _model_statistics(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        answer = codec.model_statistics(self._plane.statistics(name, version))
        # Realized quality beside Triton's figures (a join reads files: not on the loop thread).
        quality = await self._in_thread(self._plane.quality, name)
        if quality is not None:
            for entry in answer["model_stats"]:
                figures = quality.versions.get(entry["version"])
                if figures is not None:
                    entry["quality"] = figures.as_dict()
        return _json(answer)

    async def _model_quality(self, request: web.Request) -> web.Response:
        """The ModelQuality RPC's figures as JSON (a figure without labelled calls is null)."""
        name, version = _model_path(request)
        model_name = self._plane.find(name, version).model.name
        quality = await self._in_thread(self._plane.quality, name)
        answer: dict[str, Any] = {"model_name": model_name, "captured": quality is not None}
        if quality is not None:
            answer |= {
                "labels": quality.labels,
                "unknown_labels": quality.unknown,
                "late_labels": quality.late,
                "versions": {
                    v: figures.as_dict()
                    for v, figures in sorted(quality.versions.items())
                    if not version or v == version
                },
                "shadows": [
                    pair.as_dict()
                    for pair in quality.shadows
                    if not version or version in (pair.primary, pair.shadow)
                ],
            }
        return _json(answer)

    async def _feedback(self, request: web.Request) -> web.Response:
        """True answers: {"answers": [{"id": ..., "row": 0, "label": ... | "values": [...]}]}."""
        name, _ = _model_path(request)
        self._plane.find(name)
        body = await self._read_body(request)
        answers = codec.feedback_answers(body)
        accepted, dropped = self._plane.feedback(name, answers)
        return _json({"accepted": accepted, "dropped": dropped})

    async def _model_drift(self, request: web.Request) -> web.Response:
        """The ModelDrift RPC's figures as JSON (a non-finite figure, e.g. the variance ratio
        of a feature constant in training, is null)."""
        name, version = _model_path(request)
        model = self._plane.find(name, version).model
        answer: dict[str, Any] = {
            "model_name": model.name,
            "model_version": model.version,
            "monitored": model.drift is not None,
            "status": model.drift_status,
        }
        if model.drift is not None:
            answer["window"] = model.drift.settings.window
            answer.update(_finite_or_null(model.drift.report()))
        return _json(answer)

    async def _all_statistics(self, request: web.Request) -> web.Response:
        return _json(codec.model_statistics(self._plane.statistics()))

    async def _repository_index(self, request: web.Request) -> web.Response:
        body = await self._read_body(request)
        ready_only = False
        if body.strip():
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                raise InvalidInput("the request body is not JSON") from None
            if not isinstance(parsed, dict):
                raise InvalidInput('the request body must be a JSON object, e.g. {"ready": true}')
            ready_only = parsed.get("ready") is True
        return _json(
            [
                {"name": s.name, "version": s.version, "state": INDEX_STATES[s.state]}
                | ({"reason": s.error} if s.error else {})
                for s in self._plane.repository_index(ready_only)
            ]
        )

    async def _model_load(self, request: web.Request) -> web.Response:
        # A scan reads and verifies files: not on the loop thread.
        await self._in_thread(self._plane.load, request.match_info["name"])
        return _json({})

    async def _model_unload(self, request: web.Request) -> web.Response:
        self._plane.unload(request.match_info["name"])

    async def _infer(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        call = request.get(CALL)  # None: no observer
        if call is not None:
            call.asked = name
        servable = self._plane.find(name, version)
        body = await self._read_body(request)
        decoded = codec.InferRequest(body, request.headers.get(codec.HEADER_LENGTH))
        # The body's id, else an X-Request-Id header's (a proxy's), else a fresh one.
        request_id = decoded.id = call_id(decoded.id or request.headers.get(REQUEST_ID, ""))
        if call is not None:
            call.id = request_id
        plane = self._plane
        if servable.batcher is None:
            outputs = plane.infer(
                servable, decoded.inputs, decoded.outputs, decoded.timeout_s, request_id
            )
        else:  # may wait for batch-mates: not on the loop thread
            outputs = await self._in_thread(
                plane.infer,
                servable,
                decoded.inputs,
                decoded.outputs,
                decoded.timeout_s,
                request_id,
            )
        model = servable.model
        if call is not None:
            call.answered, call.answered_version = model.name, model.version
        answer, header_length = codec.infer_response(model, decoded, outputs)
        if header_length is None:
            response = web.Response(body=answer, content_type=JSON)
        else:
            response = web.Response(
                body=answer,
                content_type="application/octet-stream",
                headers={codec.HEADER_LENGTH: str(header_length)},
            )
        if _HEADER_SAFE.fullmatch(request_id):
            response.headers[REQUEST_ID] = request_id
        response[STATUS] = OK
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, within the body deadline of the handler's start (else BodyTimeout);
        InvalidInput when it ends early or its framing is broken (the client went away, or
        sent a bad chunk): no traceback, the answer is a 400 that may never be read."""
        try:
            async with asyncio.timeout(self._body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise BodyTimeout from None
        except (ConnectionError, web.RequestPayloadError) as error:
            raise InvalidInput(
                f"the request body ended before its Content-Length or is malformed ({error})"
            ) from None

    async def _no_route(self, request: web.Request) -> web.Response:
        allowed = sorted(
            {
                m
                for pattern, methods in self._allowed
                if pattern.match(request.path)
                for m in methods
            }
        )
        if allowed:
            return _error(
                METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {request.path}",
                Allow=", ".join(allowed),
            )
        return _error(
            NO_ROUTE,
            f"no endpoint {request.method} {request.path}; this server answers the Open Inference "
            "Protocol under /v2 (health/live, health/ready, models/{name}[/versions/{v}]"
            "[/ready|/config|/stats|/infer])",
        )


def _model_path(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return info["name"], info.get("version", "")


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise OSError(
            f"cannot serve HTTP on {host}:{port} ({error.strerror}); pick another --http-port, "
            "or 0 to turn HTTP off"
        ) from None
    sock.setblocking(False)
    return sock
