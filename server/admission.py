"""Admission control: a fixed number of inference calls at once, the rest refused at once."""

from __future__ import annotations

import threading
from types import TracebackType

from server.errors import Overloaded


class InflightLimiter:
    """`with limiter:` around an inference call; raises Overloaded when `limit` are in flight.

    Refusing at once (instead of queueing in the thread pool) keeps latency bounded under
    overload and leaves threads free for health and metadata calls.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def __enter__(self) -> None:
        if not self._slots.acquire(blocking=False):
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
        self._slots.release()
