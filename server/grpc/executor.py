"""The gRPC server's thread pool, which gives a call a thread only once its request has arrived.

grpcio's sync server hands a call to a pool thread as soon as its HEADERS arrive, and that thread
then waits for the request message (`grpc._server._unary_response_in_pool`). A client that
opens `workers` streams and never sends their message holds every thread: health and real calls
on other connections time out. `MessageFirstExecutor` is the server's pool with that wait taken
out of the threads:

- for every call it starts the receive of the (first) request message itself, from grpc's
  polling thread, and submits the handler only when that message is complete;
- a call whose message has not arrived within `request_timeout_s` is answered
  DEADLINE_EXCEEDED, and when more than `max_waiting` calls are waiting the oldest is answered
  RESOURCE_EXHAUSTED, so waiting calls are bounded in number and in time;
- streaming calls (PredictStream, ModelStreamInfer, reflection) run on their own pool, so a
  stream that stalls between messages can only take threads from other streams.

It keeps grpcio's sync server and its speed (bench/serve.py); the price is a dependence on
grpcio internals, every one of them in server/_compat.py with the version it was checked in.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from bnserve.server import _compat as compat
from bnserve.server.shutdown import SHUTDOWN_QUIET_S, SHUTTING_DOWN

log = logging.getLogger(__name__)

_HEALTH = b"/grpc.health.v1.Health/"  # answered even while shutting down
WATCH_RESOLUTION_S = 0.25  # overdue calls are answered within this of their deadline
_SHUTTING_DOWN = SHUTTING_DOWN.encode()


@dataclass
class _WaitingCall:
    """A call whose request message is still on its way."""

    deadline: float
    order: int
    state: Any  # grpc._server._RPCState
    call: Any  # grpc's cygrpc.Call
    received: bool = False

    @property
    def heap_key(self) -> tuple[float, int, _WaitingCall]:
        """Its heap entry: ordered by deadline, then arrival, compared in C (no __lt__ call)."""
        return (self.deadline, self.order, self)


class _WaitingCalls:
    """Calls waiting for their message, oldest first; a watchdog answers the overdue ones.

    `setting` names the timeout in the status message. `mid_stream` calls have a thread
    blocked in their request iterator: they are cancelled with the status (which ends that
    wait) instead of answered with one."""

    def __init__(
        self,
        timeout_s: float,
        max_waiting: int,
        setting: str = "request_timeout_s",
        mid_stream: bool = False,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        self._setting = setting
        self._mid_stream = mid_stream
        self.dropped = {"timeout": 0, "overflow": 0}  # calls answered without a message
        self._heap: list[tuple[float, int, _WaitingCall]] = []  # _WaitingCall.heap_key
        self._count = 0  # waiting calls not yet received or dropped
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._watchdog = threading.Thread(
            target=self._watch, name="grpc-waiting-watchdog", daemon=True
        )
        self._watchdog.start()

    def add(self, state: Any, call: Any) -> _WaitingCall:
        waiting = _WaitingCall(time.monotonic() + self.timeout_s, next(self._order), state, call)
        overflow: _WaitingCall | None = None
        with self._lock:
            # Deadlines only grow (one timeout for all), so the watchdog needs waking only when
            # it sleeps with nothing to watch: waking it per call cost 25% of the calls/s at 64.
            if not self._heap:
                self._wake.notify()
            heapq.heappush(self._heap, waiting.heap_key)
            self._count += 1
            if self._count > self.max_waiting:
                overflow = self._pop_oldest_unreceived()
        if overflow is not None:
            self.dropped["overflow"] += 1
            _answer_without_message(
                overflow,
                compat.StatusCode.resource_exhausted,
                f"too many calls waiting for their request message (max_waiting_calls="
                f"{self.max_waiting}); the oldest was dropped",
            )
        return waiting

    @property
    def count(self) -> int:
        """Calls waiting for their message now."""
        return self._count

    def received(self, waiting: _WaitingCall) -> None:
        with self._lock:
            if not waiting.received:
                waiting.received = True
                self._count -= 1
                # The entry stays in the heap until its deadline: let the call go now.
                waiting.state = waiting.call = None

    def _pop_oldest_unreceived(self) -> _WaitingCall | None:
        """Under the lock: remove and return the oldest call still waiting."""
        while self._heap:
            oldest = heapq.heappop(self._heap)[2]
            if not oldest.received:
                oldest.received = True
                self._count -= 1
                return oldest
        return None

    def _watch(self) -> None:
        while True:
            overdue: list[_WaitingCall] = []
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                while self._heap and (self._heap[0][2].received or self._heap[0][0] <= now):
                    entry = heapq.heappop(self._heap)[2]
                    if not entry.received:
                        entry.received = True
                        self._count -= 1
                        overdue.append(entry)
                if not overdue:
                    timeout = None
                    if self._heap:  # at most one wake-up per WATCH_RESOLUTION_S under load
                        timeout = max(self._heap[0][0] - now, WATCH_RESOLUTION_S)
                    self._wake.wait(timeout)
                    continue
            for entry in overdue:
                self.dropped["timeout"] += 1
                details = (
                    f"request message not received within {self.timeout_s:g} s "
                    f"({self._setting}); call dropped"
                )
                if self._mid_stream:
                    entry.call.cancel(compat.StatusCode.deadline_exceeded, details)
                else:
                    _answer_without_message(entry, compat.StatusCode.deadline_exceeded, details)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._watchdog.join(timeout=5)


def _refuse(state: Any, call: Any) -> None:
    """Answer a call whose message is in UNAVAILABLE: the server is shutting down."""
    with state.condition:
        if compat.is_active(state):
            compat.abort(state, call, compat.StatusCode.unavailable, _SHUTTING_DOWN)


def _answer_without_message(waiting: _WaitingCall, code: Any, details: str) -> None:
    """End a call that is still waiting for its message with a status (and nothing else)."""
    state = waiting.state
    with state.condition:
        if compat.is_active(state):
            compat.abort(state, waiting.call, code, details.encode())
    log.debug("call dropped before its message: %s", details)


class _StreamRequests:
    """A streaming call's request iterator with its first message (already received) in front;
    each later wait for a message is watched by `idle` (None: unbounded)."""

    def __init__(
        self, first: Any, rest: Iterator[Any], idle: _WaitingCalls | None, state: Any, call: Any
    ) -> None:
        self._first: Any = first
        self._rest = rest
        self._idle = idle
        self._state = state
        self._call = call

    def __iter__(self) -> _StreamRequests:
        return self

    def __next__(self) -> Any:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._idle is None:
            return next(self._rest)
        waiting = self._idle.add(self._state, self._call)
        try:
            return next(self._rest)
        finally:
            self._idle.received(waiting)


class MessageFirstExecutor(futures.ThreadPoolExecutor):
    """grpc.server's pool: `workers` threads for unary-request calls, `stream_workers` for
    streaming ones; no thread is given to a call before its (first) request message is in."""

    def __init__(
        self,
        workers: int,
        stream_workers: int,
        request_timeout_s: float,
        max_waiting: int,
        stream_idle_timeout_s: float = 0.0,
    ) -> None:
        compat.check_grpc_internals()
        super().__init__(max_workers=workers, thread_name_prefix="grpc")
        self._streams = futures.ThreadPoolExecutor(
            max_workers=stream_workers, thread_name_prefix="grpc-stream"
        )
        self.waiting = _WaitingCalls(request_timeout_s, max_waiting)
        self.stock_path = compat.StockPathCounter()  # calls not of the checked shape
        # Streams between messages: at most stream_workers of them wait, so no overflow bound.
        self.idle_streams = (
            _WaitingCalls(stream_idle_timeout_s, 1 << 30, "stream_idle_timeout_s", True)
            if stream_idle_timeout_s > 0
            else None
        )
        self._refusing = False  # shutting down: new calls are held, then answered UNAVAILABLE
        self._held: list[tuple[Any, Any]] = []  # (state, call) refused, not yet answered
        self._holding = True  # False once release_held_calls ran: refuse at once from then on
        self._unary_calls = 0  # unary-request calls accepted and not yet finished
        self._last_arrival = 0.0  # monotonic time the last call arrived
        self._unary_done = threading.Condition()

    def refuse_new_calls(self) -> None:
        """From now on every new call but health checks is refused with UNAVAILABLE (retryable),
        never cut off (CANCELLED): held unanswered until `release_held_calls`, which runs once
        grpc's stop has sent its GOAWAY (server/shutdown.py says why)."""
        self._last_arrival = time.monotonic()  # the quiet is counted from now
        self._refusing = True

    def wait_until_quiet(self, timeout_s: float, quiet_s: float = SHUTDOWN_QUIET_S) -> bool:
        """After `refuse_new_calls`: block until every accepted unary-request call has finished
        and no call has come for quiet_s (True), or timeout_s passes (False); an idle server
        returns at once. Callers whose calls are held send no more, so the quiet comes as soon
        as the accepted calls are done and their callers' next calls are held."""
        deadline = time.monotonic() + timeout_s
        with self._unary_done:
            while True:
                now = time.monotonic()
                quiet_until = self._last_arrival + quiet_s
                if self._unary_calls == 0 and now >= quiet_until:
                    return True
                if now >= deadline:
                    return False
                self._unary_done.wait(min(deadline, max(quiet_until, now + 0.01)) - now)

    def release_held_calls(self) -> int:
        """Answer every held call UNAVAILABLE (once grpc's stop has begun), and refuse later
        ones at once; returns how many were held."""
        with self._unary_done:
            held, self._held, self._holding = self._held, [], False
        for state, call in held:
            _refuse(state, call)
        return len(held)

    def _hold(self, state: Any, call: Any) -> bool:
        """Keep a refused call unanswered until release (False: answer it now instead)."""
        with self._unary_done:
            if self._holding and len(self._held) < self.waiting.max_waiting:
                self._held.append((state, call))
                return True
        return False

    def _unary_call_finished(self, _: futures.Future[Any]) -> None:
        with self._unary_done:
            self._unary_calls -= 1
            self._unary_done.notify_all()

    def _submit_here(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> futures.Future[Any]:
        return super().submit(fn, *args, **kwargs)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        pool_call = compat.parse_pool_call(args, kwargs)
        if pool_call is None:  # not the shape checked: grpcio's stock path, counted
            self.stock_path.add(args, kwargs)
            return super().submit(fn, *args, **kwargs)
        state, call, requests = pool_call.state, pool_call.call, pool_call.requests
        outcome: futures.Future[Any] = futures.Future()
        outcome.set_running_or_notify_cancel()
        # Shutting down: refused once the message is in (a call refused before its request is
        # read reaches the client as CANCELLED, not as the UNAVAILABLE it was sent).
        health = pool_call.method.startswith(_HEALTH)  # probes never hold a stop
        refused = self._refusing and not health
        if not health:
            self._last_arrival = time.monotonic()
        if not refused and requests is None:
            with self._unary_done:
                self._unary_calls += 1
            outcome.add_done_callback(self._unary_call_finished)
        waiting = self.waiting.add(state, call)

        def run(argument: Any) -> None:
            # Streams on their own pool; unary calls on this one's threads (its own submit).
            submit = self._streams.submit if requests is not None else self._submit_here
            started = submit(fn, *pool_call.arguments(argument))
            started.add_done_callback(lambda done: _copy_outcome(done, outcome))

        def on_message(receive: Callable[[Any], Any], event: Any) -> Any:
            finished = receive(event)  # sets the state's request, or marks the client closed
            self.waiting.received(waiting)
            with state.condition:
                request = compat.take_request(state)
                active = compat.is_active(state)
                if active and request is None and requests is None:
                    if compat.client_closed(state):
                        method = pool_call.method.decode(errors="replace")
                        compat.abort(
                            state,
                            call,
                            compat.StatusCode.unimplemented,
                            f'"{method}" requires exactly one request message.'.encode(),
                        )
                    active = False
                hold = active and refused
                if hold:
                    active = False
            if hold and not self._hold(state, call):
                _refuse(state, call)
            if not active:
                outcome.set_result(None)
            elif requests is not None:
                run(
                    _StreamRequests(request, requests, self.idle_streams, state, call)
                    if request is not None
                    else requests
                )
            else:
                run(request)
            return finished

        compat.start_receive(state, call, pool_call.deserializer, on_message)
        return outcome

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.waiting.close()
        if self.idle_streams is not None:
            self.idle_streams.close()
        self._streams.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def _copy_outcome(done: futures.Future[Any], outcome: futures.Future[Any]) -> None:
    error = done.exception()
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())
