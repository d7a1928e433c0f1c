"""Dynamic batching: gather concurrent requests into one model run, answer each its own rows.

A wrapper around a predict function (x (N, F) → list of arrays with N leading rows), with a
bounded queue (full → Overloaded at once), a size bound and a time bound, and a future per
request (the shape of MLServer's adaptive batcher).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from server.errors import DeadlineExpired, Overloaded

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class _Request:
    x: np.ndarray  # (n, F) float32, n ≥ 1
    future: Future[list[np.ndarray]]
    deadline: float | None  # time.monotonic() value, None: no deadline


_STOP = object()


class DynamicBatcher:
    """Score concurrent requests together: `score(x, timeout_s)` blocks until x's own rows are back.

    A batch closes when it holds max_batch_size rows or max_delay_s has passed since its first
    request; requests whose deadline passed before their batch ran are not scored.
    """

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        name: str = "model",
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._queue: queue.Queue[_Request | object] = queue.Queue(maxsize=max_queue)
        self.batches_run = 0  # counters read by tests and logs, written only by the worker
        self.requests_expired = 0
        self._worker = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    def submit(self, x: np.ndarray, timeout_s: float | None = None) -> Future[list[np.ndarray]]:
        """Queue x (n, F); the future resolves to the outputs' n rows. Raises Overloaded if full."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        request = _Request(x, Future(), deadline)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise Overloaded(
                f"inference queue is full ({self.max_queue} requests waiting for a batch); "
                "retry with backoff or add replicas"
            ) from None
        return request.future

    def score(self, x: np.ndarray, timeout_s: float | None = None) -> list[np.ndarray]:
        """Submit x and wait for its rows, at most timeout_s seconds (None: no limit)."""
        future = self.submit(x, timeout_s)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise DeadlineExpired(
                f"deadline passed after {timeout_s:.3f} s waiting for a batch to be scored"
            ) from None

    def close(self) -> None:
        """Score what is queued, then stop the worker."""
        self._queue.put(_STOP)
        self._worker.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)  # type: ignore[arg-type]
            self._score(batch)
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch = [first]
        rows = first.x.shape[0]
        closes_at = time.monotonic() + self.max_delay_s
        while rows < self.max_batch_size:
            remaining = closes_at - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
            rows += item.x.shape[0]  # type: ignore[union-attr]
        return batch, False

    def _score(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        live = []
        for request in batch:
            if not request.future.set_running_or_notify_cancel():
                self.requests_expired += 1  # the caller gave up
            elif request.deadline is not None and request.deadline <= now:
                self.requests_expired += 1
                request.future.set_exception(DeadlineExpired("deadline passed before scoring"))
            else:
                live.append(request)
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([request.x for request in live])
        try:
            outputs = self._predict(x)
        except Exception as error:
            for request in live:
                request.future.set_exception(error)
            return
        self.batches_run += 1
        start = 0
        for request in live:
            stop = start + request.x.shape[0]
            request.future.set_result([output[start:stop] for output in outputs])
            start = stop
