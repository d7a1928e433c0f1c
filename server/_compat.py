"""Every use of another library's private names in the server, in one place, each with the version
it was checked against. Nothing else in server/ reaches into a library's underscore names.

- grpcio 1.85.3 (pinned in pyproject.toml): `grpc._server`'s call machinery, which
  server/grpc/executor.py's MessageFirstExecutor drives so that a call gets a thread only once its
  request message is in (the stall protection). The server refuses to start on another grpcio
  unless `--allow-unpinned-grpcio` says to run without that protection (grpcio's own pool,
  logged, `bnserve_grpc_stall_protection` 0). A call whose submit does not have the shape below
  takes grpcio's stock path: counted (`bnserve_grpc_stock_path_calls`) and logged once.
- onnxruntime 1.32.0: `InferenceSession._sess.run`, the C++ binding server/models/model.py calls per
  request (it skips only Python-side checks that hold by construction); without it,
  `InferenceSession.run`, logged once.

aiohttp's grace is its public `AppRunner(shutdown_timeout=)` (server/rest/server.py): no private
use. tests/server/test_compat.py breaks each assumption here and sees the refusal or the fallback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import _server as grpc_server
from grpc._cython import cygrpc

log = logging.getLogger(__name__)

GRPCIO_PINNED = "1.85.3"
ONNXRUNTIME_CHECKED = "1.32.0"

# grpc._server names the pool uses (checked in grpcio 1.85.3).
GRPC_SERVER_NAMES = (
    "_unary_response_in_pool",
    "_stream_response_in_pool",
    "_receive_message",
    "_RequestIterator",
    "_RECEIVE_MESSAGE_TOKEN",
    "_abort",
    "_is_rpc_state_active",
    "_CLOSED",
    "_EMPTY_FLAGS",
)
SUBMIT_ARGUMENTS = 7  # runner, rpc_event, state, behavior, argument_thunk, deserializer, serializer

StatusCode = cygrpc.StatusCode


class UnpinnedGrpcio(ValueError):
    """This grpcio is not the one the stall protection was checked against."""


def grpc_internals_problem() -> str | None:
    """Why the stall-protected pool cannot run on the grpcio installed (None: it can)."""
    version = getattr(grpc, "__version__", "unknown")
    if version != GRPCIO_PINNED:
        return f"grpcio {version} is installed, not the pinned {GRPCIO_PINNED}"
    missing = [name for name in GRPC_SERVER_NAMES if not hasattr(grpc_server, name)]
    if missing:
        return f"grpcio {version} lacks grpc._server.{', '.join(missing)}"
    return None


def check_grpc_internals() -> None:
    """Raise UnpinnedGrpcio naming the problem and the way out, unless the pool can run."""
    problem = grpc_internals_problem()
    if problem is not None:
        raise UnpinnedGrpcio(
            f"{problem}: the protection against stalled calls (server/grpc/executor.py) relies on "
            "its internals. Install the pinned grpcio, or pass --allow-unpinned-grpcio "
            "(BNSERVE_ALLOW_UNPINNED_GRPCIO=1) to serve without that protection"
        )


@dataclass(frozen=True)
class PoolCall:
    """One call grpc hands its pool: `pool.submit(context.run, runner, rpc_event, state,
    behavior, argument_thunk, deserializer, serializer)` in grpcio 1.85.3. `requests` is the
    request iterator of a streaming-request call (grpc's thunk for those is a lambda returning
    `_RequestIterator`), None for a unary-request call."""

    runner: Any
    rpc_event: Any
    state: Any  # grpc._server._RPCState
    behavior: Any
    deserializer: Any
    serializer: Any
    requests: Any | None

    @property
    def call(self) -> Any:
        """The cygrpc.Call."""
        return self.rpc_event.call

    @property
    def method(self) -> bytes:
        method: bytes = self.rpc_event.call_details.method
        return method

    def arguments(self, argument: Any) -> tuple[Any, ...]:
        """What to submit to run the handler on `argument` (a request, or an iterator)."""
        return (
            self.runner,
            self.rpc_event,
            self.state,
            self.behavior,
            lambda: argument,
            self.deserializer,
            self.serializer,
        )


def parse_pool_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> PoolCall | None:
    """The call in a pool submit's arguments, or None when they do not have the checked shape."""
    if kwargs or len(args) != SUBMIT_ARGUMENTS or args[0] not in _RUNNERS:
        return None
    runner, rpc_event, state, behavior, thunk, deserializer, serializer = args
    requests = None
    if getattr(thunk, "__name__", None) == "<lambda>":  # grpc's thunk for request streams
        requests = thunk()
        if not isinstance(requests, grpc_server._RequestIterator):
            return None
    elif getattr(thunk, "__name__", None) != "unary_request":
        return None
    return PoolCall(runner, rpc_event, state, behavior, deserializer, serializer, requests)


_RUNNERS = (grpc_server._unary_response_in_pool, grpc_server._stream_response_in_pool)


def is_active(state: Any) -> bool:
    """The call can still be answered (call under state.condition)."""
    active: bool = grpc_server._is_rpc_state_active(state)
    return active


def client_closed(state: Any) -> bool:
    """The client half-closed (sent its last message)."""
    return state.client is grpc_server._CLOSED


def take_request(state: Any) -> Any:
    """The request message just received (None: none came), cleared from the state."""
    request, state.request = state.request, None
    return request


def abort(state: Any, call: Any, code: Any, details: bytes) -> None:
    """End the call with code and details (call under state.condition)."""
    grpc_server._abort(state, call, code, details)


def start_receive(
    state: Any, call: Any, deserializer: Any, on_message: Callable[[Callable[[Any], Any], Any], Any]
) -> None:
    """Start receiving the call's (first) request message; on_message(receive, event) runs on
    grpc's polling thread when it is in, and must call receive(event) first (it sets the
    state's request, or marks the client closed)."""
    receive = grpc_server._receive_message(state, call, deserializer)
    with state.condition:
        call.start_server_batch(
            (cygrpc.ReceiveMessageOperation(grpc_server._EMPTY_FLAGS),),
            lambda event: on_message(receive, event),
        )
        state.due.add(grpc_server._RECEIVE_MESSAGE_TOKEN)


class StockPathCounter:
    """Calls that took grpcio's stock path; the first is logged (with why)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._lock:
            self.count += 1
            first = self.count == 1
        if first:
            log.warning(
                "a gRPC call took grpcio's stock path, without the stall protection: its pool "
                "submit (%d arguments, first %r, keywords %s) is not the shape checked in grpcio "
                "%s; counted in bnserve_grpc_stock_path_calls, logged once",
                len(args),
                args[0] if args else None,
                sorted(kwargs),
                GRPCIO_PINNED,
            )


# --- onnxruntime --------------------------------------------------------------------------------

_onnxruntime_fallback_logged = threading.Event()


def session_run(session: Any) -> Callable[..., Any]:
    """The fastest run(output_names, feed, run_options) of an onnxruntime InferenceSession: its
    C++ binding `_sess.run` (checked in onnxruntime 1.32.0), else the public `run` (logged
    once)."""
    binding = getattr(session, "_sess", None)
    run = getattr(binding, "run", None)
    if callable(run):
        return run  # type: ignore[no-any-return]
    if not _onnxruntime_fallback_logged.is_set():
        _onnxruntime_fallback_logged.set()
        log.warning(
            "onnxruntime's InferenceSession has no _sess.run (checked in %s): scoring through "
            "InferenceSession.run (slower per call, same answers)",
            ONNXRUNTIME_CHECKED,
        )
    public: Callable[..., Any] = session.run
    return public
