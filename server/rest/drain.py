"""The HTTP transport's part of a stop (server/shutdown.py): requests in flight counted, new ones
held while draining until `release` (the transport then answers them 503 with Retry-After and
Connection: close). Every method runs on the HTTP server's event loop thread."""

from __future__ import annotations

import asyncio

from bnserve.server.shutdown import SHUTDOWN_QUIET_S

POLL_S = 0.01  # how often wait_until_quiet looks (shutdown only)


class Drain:
    """In-flight requests and, once `begin` ran, the held ones."""

    def __init__(self, max_held: int = 4096) -> None:
        self.draining = False
        self._max_held = max_held  # past it a refused request is answered at once
        self._inflight = 0  # requests being answered (not held)
        self._held = 0
        self._last_arrival = 0.0  # loop time of the last refused request
        self._released: asyncio.Event | None = None

    def begin(self) -> None:
        """From now on refuse new requests (health probes still answer). The quiet is counted
        from now: the loop runs this only between requests, so none looks in flight yet."""
        self._released = asyncio.Event()
        self._last_arrival = asyncio.get_running_loop().time()
        self.draining = True

    def entered(self) -> None:
        self._inflight += 1

    def left(self) -> None:
        self._inflight -= 1

    async def hold(self, open_path: bool) -> bool:
        """While draining: True for a new request, which must be refused once this returns
        (held until `release`); False for a health probe, which is answered as usual."""
        if open_path:
            return False
        self._last_arrival = asyncio.get_running_loop().time()
        released = self._released
        if released is not None and not released.is_set() and self._held < self._max_held:
            self._held += 1
            try:
                await released.wait()
            finally:
                self._held -= 1
        return True

    async def wait_until_quiet(self, timeout_s: float, quiet_s: float = SHUTDOWN_QUIET_S) -> bool:
        """Until no request is in flight and none came for quiet_s (True), or timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            now = loop.time()
            if self._inflight == 0 and now >= self._last_arrival + quiet_s:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(POLL_S)

    def release(self) -> int:
        """Answer the held requests (and later ones at once); returns how many were held."""
        held = self._held
        if self._released is not None:
            self._released.set()
        return held
