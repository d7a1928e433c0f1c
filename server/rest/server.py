"""The Open Inference Protocol over HTTP/REST on --http-port: aiohttp on its own event loop
thread, calling the same data plane as the gRPC servicers.

aiohttp was chosen by measurement (docs/serving.md, HTTP/REST: an echo POST at concurrency 1 cost
about the same as uvicorn+httptools and ~90× less than the standard library's http.server,
which waits on delayed ACKs), and it is one well-kept package with TLS and keep-alive built in.
Its loop runs in one thread: calls of an unbatched model are scored inline (tens of µs, no thread
hop); calls that may wait for a dynamic batch go to a small thread pool so batch-mates can arrive.
While idle the loop sleeps in epoll and takes nothing from the gRPC threads.

Errors are {"error": "..."} with the status that fits: 400 bad input, 401 no valid token, 404
unknown model/version or path, 405 wrong method, 413 body too large, 429 overloaded, 503 not
ready, 504 timeout; 500 only for a server fault.
"""

from __future__ import annotations

import asyncio
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
from typing import Any

import grpc
from aiohttp import web

from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.dataplane import (
    EXTENSIONS,
    INDEX_STATES,
    PLATFORM,
    DataPlane,
)
from bnserve.server.plane.errors import (
    INTERNAL_MESSAGE,
    DeadlineExpired,
    InvalidInput,
    ModelControlClosed,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ServingError,
)
from bnserve.server.rest import codec

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[ServingError], int] = {
    ModelControlClosed: 403,
    InvalidInput: 400,
    ModelNotFound: 404,
    ModelNotReady: 503,
    Overloaded: 429,
    DeadlineExpired: 504,
    ModelLoadError: 503,
}
# For bnserve_requests: an HTTP answer counted under the gRPC code of the same meaning.
CODE_BY_STATUS = {
    200: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
DENIED = (
    "missing or invalid bearer token: send the header 'Authorization: Bearer <token>' with a "
    "token the server accepts"
)
JSON = "application/json"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # probes send no token
Handler = Callable[[web.Request], Awaitable[web.Response]]


def ssl_context(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext | None:
    """The HTTP port's TLS from the gRPC port's files (security/tls.py checked them already)."""
    if not cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca_file)
    return context


def _finite_or_null(value: Any) -> Any:
    """value with every NaN or ±inf float (anywhere inside) replaced by None: JSON has none."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=codec.dumps({"error": message}), content_type=JSON, headers=headers
    )


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.dumps(value), content_type=JSON)


class RestServer:
    """Bound at construction (port known, errors early); `start` serves, `stop(grace)` drains."""

    def __init__(
        self,
        plane: DataPlane,
        host: str,
        port: int,
        *,
        max_body_bytes: int,
        server_version: str,
        accepts: Callable[[str | None], bool] | None = None,
        tls: ssl.SSLContext | None = None,
        metrics: ServerMetrics | None = None,
        workers: int = 8,
        reuse_port: bool = False,
    ) -> None:
        """reuse_port: share the port with the other processes of a supervisor (which holds it
        against anyone else, server/process/supervisor.py)."""
        self._plane = plane
        self._accepts = accepts
        self._tls = tls
        self._metrics = metrics
        self._metadata = {"name": "bnserve", "version": server_version, "extensions": EXTENSIONS}
        self._socket = _bind(host, port, reuse_port)
        self.port = self._socket.getsockname()[1]
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http")
        self._max_body_bytes = max_body_bytes
        self._app = web.Application(client_max_size=max_body_bytes)
        self._add_routes(self._app.router)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http-loop", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise OSError(f"HTTP server did not start: {self._start_error}")

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, self._socket, ssl_context=self._tls)
            loop.run_until_complete(site.start())
        except BaseException as error:  # reported to start()
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    def stop(self, grace_s: float) -> None:
        """Refuse new connections, give in-flight calls grace_s seconds, then close."""
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or self._thread is None:
            self._socket.close()
            return

        async def shut_down() -> None:
            try:
                # AppRunner(shutdown_timeout=) set late: grace is known only now.
                runner._shutdown_timeout = grace_s
                await runner.cleanup()
            finally:
                loop.stop()

        done = asyncio.run_coroutine_threadsafe(shut_down(), loop)
        self._thread.join(grace_s + 10)
        if done.done() and done.exception() is not None:
            log.error("HTTP server shutdown: %s", done.exception())
        self._socket.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop = None

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
                ("POST", prefix + "/infer", self._infer),
            ]
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
        """Token check (except probes), error → status translation, metrics."""
        accepts = self._accepts
        metrics = self._metrics
        max_body_bytes = self._max_body_bytes
        method = "HTTP " + path
        open_path = path in OPEN_PATHS

        async def wrapped(request: web.Request) -> web.Response:
            started = time.perf_counter()
            if accepts is not None and not open_path and not accepts(_bearer(request)):
                response = _error(401, DENIED, **{"WWW-Authenticate": "Bearer"})
            else:
                try:
                    response = await handler(request)
                except ServingError as error:
                    status = _status(error)
                    extra = {"Retry-After": "1"} if status == 429 else {}
                    response = _error(status, str(error), **extra)
                except web.HTTPRequestEntityTooLarge:
                    response = _error(
                        413,
                        f"request body over the {max_body_bytes}-byte limit (--max-message-bytes)",
                    )
                except Exception:
                    log.exception("unexpected error in %s %s", request.method, request.path)
                    response = _error(500, INTERNAL_MESSAGE)
            if metrics is not None:
                code = CODE_BY_STATUS.get(response.status, grpc.StatusCode.INTERNAL)
                metrics.observe_call(method, code, time.perf_counter() - started)
            return response

        return wrapped

    # --- handlers ----------------------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self._plane.ready
        return _json({"ready": ready}, 200 if ready else 503)

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
                "inputs": [codec.tensor_metadata(model.input_spec)],
                "outputs": [codec.tensor_metadata(spec) for spec in model.output_specs],
            }
        )

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        if self._plane.model_ready(name, version):
            return _json({"name": name, "ready": True})
        self._plane.find(name, version)  # raises: unknown (404) or not ready (503)
        return _json({"name": name, "ready": False}, 503)

    async def _model_config(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        return _json(codec.model_config(self._plane.model_config(name, version)))

    async def _model_statistics(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        return _json(codec.model_statistics(self._plane.statistics(name, version)))

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
        body = await request.read()
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
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._plane.load, request.match_info["name"]
        )  # a scan reads and verifies files: not on the loop thread
        return _json({})

    async def _model_unload(self, request: web.Request) -> web.Response:
        self._plane.unload(request.match_info["name"])

    async def _infer(self, request: web.Request) -> web.Response:
        name, version = _model_path(request)
        servable = self._plane.find(name, version)
        body = await request.read()
        decoded = codec.InferRequest(body, request.headers.get(codec.HEADER_LENGTH))
        plane = self._plane
        if servable.batcher is None:
            outputs = plane.infer(servable, decoded.inputs, decoded.outputs, decoded.timeout_s)
        else:  # may wait for batch-mates: not on the loop thread
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                plane.infer,
                servable,
                decoded.inputs,
                decoded.outputs,
                decoded.timeout_s,
            )
        answer, header_length = codec.infer_response(servable.model, decoded, outputs)
        if header_length is None:
            return web.Response(body=answer, content_type=JSON)
        return web.Response(
            body=answer,
            content_type="application/octet-stream",
            headers={codec.HEADER_LENGTH: str(header_length)},
        )

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
                405, f"{request.method} is not allowed on {request.path}", Allow=", ".join(allowed)
            )
        return _error(
            404,
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


def _status(error: ServingError) -> int:
    for error_type in type(error).__mro__:
        if error_type in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[error_type]
    return 500


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
