"""Every open HTTP connection, oldest first, with what it is doing: the cap on their number and the
header deadline. aiohttp keeps a connection for ever while a request head trickles in, and has
no cap: 3,000 connections that sent half a request line were all still open 65 s later, and
enough of them take every file descriptor, the gRPC port's included.

- **Header deadline** (`http_header_timeout_s`): a connection that has started a request head
  (its first byte since it opened or since its last response) must complete it within this, or
  it is closed.
- **Idle keep-alive deadline** (`http_keepalive_timeout_s`): aiohttp's own `keepalive_timeout`,
  counted from the connection's opening or its last response to the next request.
- **Cap** (`http_max_connections`, lowered to keep `grpc_fd_reserve` descriptors for gRPC): a
  new connection past it evicts the oldest connection that is idle or still sending its head;
  when every one is busy answering, the new one is answered 503 and closed.

Connections are accepted by `Listener`, a few at a time, each counted from its accept on:
asyncio's own accept loop takes up to `backlog` connections at once before any protocol runs,
which let a burst of 400 take the last descriptors with the cap at 120.

Runs on the HTTP server's event loop thread only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import resource
import socket
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

IDLE, HEAD, BUSY = "idle", "head", "busy"  # waiting for a request, receiving its head, answering
AT_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: 68\r\n\r\n"
    b'{"error": "too many HTTP connections (http_max_connections); retry"}'
)


MIN_CAP = 16  # HTTP connections allowed however low the file limit
ACCEPT_BATCH = 16  # connections accepted per wake-up of the listening socket
PAUSE_S = 0.05  # accepts paused this long while handshakes hold the cap


def connection_cap(wanted: int, grpc_reserve: int) -> int:
    """wanted, lowered so that HTTP connections can never take the last grpc_reserve descriptors
    of the process's file limit (RLIMIT_NOFILE, soft) beyond those open now; at least MIN_CAP."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: a guess at what a started server holds
        in_use = 64
    cap = min(wanted, soft - in_use - grpc_reserve)
    if cap < wanted:
        log.warning(
            "HTTP connections capped at %d, not %d: the file limit is %d, %d are open and "
            "%d stay reserved for gRPC (--grpc-fd-reserve); raise the limit (ulimit -n) for more",
            max(cap, MIN_CAP),
            wanted,
            soft,
            in_use,
            grpc_reserve,
        )
    return max(cap, MIN_CAP)


class Connections:
    """The registry; `protocol(inner)` wraps each aiohttp protocol a listener makes."""

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.closed: collections.Counter[str] = collections.Counter()  # by reason, for metrics
        self._open: dict[_Tracked, None] = {}  # insertion order: oldest first
        self._by_transport: dict[Any, _Tracked] = {}
        self.accepting = 0  # accepted, not yet handed over (a TLS handshake, say)

    @property
    def count(self) -> int:
        return len(self._open) + self.accepting

    def protocol(
        self, make_inner: Callable[[], asyncio.Protocol], accepted: bool = False
    ) -> asyncio.Protocol:
        """A protocol for one new connection, around the one make_inner makes; accepted: it
        was counted in `accepting` since its accept."""
        return _Tracked(self, make_inner, accepted)

    def request_started(self, transport: Any) -> None:
        """A request head is complete and its handler runs (called by the handler wrapper)."""
        tracked = self._by_transport.get(transport)
        if tracked is not None:
            tracked.set_state(BUSY)

    def request_finished(self, transport: Any) -> None:
        tracked = self._by_transport.get(transport)
        if tracked is not None:
            tracked.set_state(IDLE)

    def _admit(self, tracked: _Tracked) -> bool:
        # Those still being accepted do not count here (they would refuse each other while
        # none is open yet): the listener bounds them.
        if len(self._open) >= self.max_connections:
            oldest = next((c for c in self._open if c.state != BUSY), None)
            if oldest is None:
                self.closed["over_capacity"] += 1
                return False
            self.closed["evicted"] += 1
            oldest.close()
        self._open[tracked] = None
        self._by_transport[tracked.transport] = tracked
        return True

    def _forget(self, tracked: _Tracked) -> None:
        self._open.pop(tracked, None)
        self._by_transport.pop(tracked.transport, None)


class Listener:
    """Accepts connections on a bound, listening socket for `connections`, ACCEPT_BATCH per
    wake-up, counting each from its accept; `close` stops listening (the socket closes)."""

    def __init__(
        self,
        sock: socket.socket,
        connections: Connections,
        make_inner: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None,
    ) -> None:
        self._sock = sock
        self._connections = connections
        self._make_inner = make_inner
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._connections.count > self._connections.max_connections + ACCEPT_BATCH:
                self._pause(PAUSE_S)  # TLS handshakes pile up: let them finish or time out
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:  # out of descriptors after all: wait, do not spin
                log.error("HTTP accept failed (%s); pausing accepts for 1 s", error)
                self._pause(1.0)
                return
            conn.setblocking(False)
            self._connections.accepting += 1
            task = self._loop.create_task(self._hand_over(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _hand_over(self, conn: socket.socket) -> None:
        connections = self._connections
        try:
            await self._loop.connect_accepted_socket(
                lambda: connections.protocol(self._make_inner, accepted=True),
                sock=conn,
                ssl=self._tls,
                ssl_handshake_timeout=connections.header_timeout_s if self._tls else None,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as error:
            connections.accepting -= 1  # the handshake failed or timed out: nothing to keep
            log.debug("HTTP connection dropped before it started: %s", error)
            conn.close()

    def close(self) -> None:
        """Stop listening: new connections are refused from now on."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class _Tracked(asyncio.Protocol):
    """One connection: forwards every event to aiohttp's protocol, and keeps its state."""

    def __init__(
        self, registry: Connections, make_inner: Callable[[], asyncio.Protocol], accepted: bool
    ) -> None:
        self._registry = registry
        self._accepted = accepted
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None
        self.transport: Any = None
        self.state = IDLE
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._accepted:
            self._registry.accepting -= 1
        if not self._registry._admit(self):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(AT_CAPACITY)
            transport.close()
            return
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self.state == IDLE:
            self.set_state(HEAD)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._registry._forget(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def set_state(self, state: str) -> None:
        self._cancel_deadline()
        self.state = state
        if state == HEAD:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._registry.header_timeout_s, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self.state == HEAD:
            self._registry.closed["header_timeout"] += 1
            self.close()

    def close(self) -> None:
        """Drop the connection now (it holds no request being answered)."""
        self._cancel_deadline()
        self._registry._forget(self)
        if self.transport is not None:
            self.transport.abort()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
