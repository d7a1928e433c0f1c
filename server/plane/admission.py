"""Admission control: a fixed number of inference calls at once, the rest refused at once."""

from __future__ import annotations

import threading
from types import TracebackType

from bnserve.server.plane.errors import Overloaded


class InflightLimiter:
    """`with limiter:` around an inference call; raises Overloaded when `limit` are in flight.

    Refusing at once (instead of queueing in the thread pool) keeps latency bounded under
    overload and leaves threads free for health and metadata calls.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0  # read freely (metrics, tests); written under the lock
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            if self.in_flight < self.limit:
                self.in_flight += 1
                return
        raise Overloaded(
            f"server busy: {self.limit} inference calls already in flight "
            "(max_inflight); retry with backoff or add replicas"
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self.in_flight -= 1
