"""Dynamic batching that never costs: a call that finds the model idle runs at once, in its own
thread; calls that arrive while the model is busy queue, and run together as the next batch.

No worker thread and no fixed wait: when a run ends, the thread that made it takes the queued
calls (up to max_batch_size rows) as the next batch and hands it to the first of them, whose
own thread runs it, answers every member its own rows, and hands on in turn. Before it runs,
the leader yields the CPU for as long as each yield brings more calls to the queue (calls that
were being decoded when the model freed; a yield costs nothing when no other thread can run).
So a lone call pays one lock and one check, and under load a batch holds what queued during
the run before it and what was about to.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from bnserve.server.plane.errors import DeadlineExpired, Overloaded
from bnserve.server.plane.inputs import ModelInput, concatenate

log = logging.getLogger(__name__)

# A model run: x (N, F) float32 or a mixed model's Columns → every output, N rows each
# (Model.predict, or a wrapper of it).
Predict = Callable[[ModelInput], list[np.ndarray]]


class _Request:
    """One queued call: its rows, deadline, and what its thread is woken with."""

    __slots__ = ("batch", "deadline", "error", "outputs", "taken", "woken", "x")

    def __init__(self, x: ModelInput, deadline: float | None) -> None:
        self.x = x  # (n, F) float32 or Columns of n rows, n ≥ 1
        self.deadline = deadline  # time.monotonic() value, None: no deadline
        self.woken = threading.Event()
        self.outputs: list[np.ndarray] | None = None  # its own n rows of every output
        self.error: BaseException | None = None
        self.batch: list[_Request] | None = None  # set when this call's thread must run a batch
        self.taken = False  # out of the queue (in a batch, or expired): its thread must not leave


class DynamicBatcher:
    """Score concurrent requests together: `score(x, timeout_s)` blocks until x's own rows are back.

    max_delay_s: once the model frees with calls queued, how long the next batch may wait for
    more calls to fill it to max_batch_size (0: run what queued at once); the wait is the next
    batch's own, in its leader's thread, so the call that freed the model returns at once. A
    call that finds the model idle and nothing queued never waits. Queued calls whose deadline
    passes before their batch runs are not scored.
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
        self.name = name
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the model goes idle
        self._queue: deque[_Request] = deque()
        self._busy = False  # a thread is running (or about to run) the model
        self._closing = 0  # close() calls waiting for the model to go idle
        # Counters read by tests and logs (written under the lock or by the one running thread).
        self.batches_run = 0  # model runs, a lone call's included
        self.requests_batched = 0  # calls scored in a run with at least one other call
        self.requests_expired = 0  # queued calls dropped unscored: deadline passed

    @property
    def queued(self) -> int:
        """Calls waiting for the model right now."""
        return len(self._queue)

    def score(self, x: ModelInput, timeout_s: float | None = None) -> list[np.ndarray]:
        """Score x (n, F) within timeout_s seconds (None: no limit); answers its n rows of every
        output. Raises Overloaded when max_queue calls are already waiting, DeadlineExpired
        when timeout_s passes before its batch runs."""
        with self._lock:
            if not self._busy and not self._queue:
                self._busy = True
                request = None
            elif len(self._queue) >= self.max_queue:
                raise Overloaded(
                    f"inference queue is full ({self.max_queue} requests waiting for a batch); "
                    "retry with backoff or add replicas"
                )
            else:
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
                request = _Request(x, deadline)
                self._queue.append(request)
        if request is None:  # the model was idle: run at once, in this thread
            try:
                outputs = self._predict(x)
                self.batches_run += 1
            finally:
                self._hand_on()
            return outputs
        return self._wait(request, timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Wait until queued calls are answered and the model is idle (at most timeout_s)."""
        with self._idle:
            self._closing += 1
            try:
                self._idle.wait_for(lambda: not self._busy and not self._queue, timeout_s)
            finally:
                self._closing -= 1

    def _wait(self, request: _Request, timeout_s: float | None) -> list[np.ndarray]:
        if not request.woken.wait(timeout_s):
            with self._lock:
                if not request.taken:  # still queued: leave the queue, unscored
                    self._queue.remove(request)
                    request.taken = True
                    self.requests_expired += 1
                    raise DeadlineExpired(
                        f"deadline passed after {timeout_s:.3f} s waiting for a batch to be scored"
                    )
            request.woken.wait()  # in a batch already: it is ours to run, or being run now
        if request.batch is not None:
            self._gather(request.batch)
            if self.max_delay_s > 0:
                self._fill(request.batch, time.monotonic() + self.max_delay_s)
            self._run(request.batch)
            if request.deadline is not None and request.deadline <= time.monotonic():
                raise DeadlineExpired("deadline passed while its batch was scored")
        if request.error is not None:
            raise request.error
        assert request.outputs is not None
        return request.outputs

    def _run(self, batch: list[_Request]) -> None:
        """Score batch in this thread, answer each member its own rows, hand the model on."""
        try:
            try:
                # Columns concatenate column by column: an example's score never depends on
                # its batch.
                x = batch[0].x if len(batch) == 1 else concatenate([r.x for r in batch])
                outputs = self._predict(x)
            except Exception as error:
                for member in batch:
                    member.error = error
                return
            self.batches_run += 1
            if len(batch) > 1:
                self.requests_batched += len(batch)
            start = 0
            for member in batch:
                stop = start + member.x.shape[0]
                member.outputs = [output[start:stop] for output in outputs]
                start = stop
        finally:
            for member in batch:
                if member.batch is None:
                    member.woken.set()
            self._hand_on()

    def _hand_on(self) -> None:
        """The model is free: give the queued calls to the first of them as a batch, or idle."""
        with self._lock:
            batch = self._take(self.max_batch_size) if self._queue else None
            if not batch:
                self._busy = False
                if self._closing:
                    self._idle.notify_all()
                return
            batch[0].batch = batch
        batch[0].woken.set()

    def _gather(self, batch: list[_Request]) -> None:
        """In the leader's thread, before its batch runs: yield the CPU and add the calls that
        queue meanwhile, for as long as each yield brings more (calls being decoded when the
        model freed). A yield costs nothing when no other thread can run."""
        rows = sum(request.x.shape[0] for request in batch)
        while rows < self.max_batch_size:
            os.sched_yield()
            with self._lock:
                more = self._take(self.max_batch_size - rows, at_least_one=False)
            if not more:
                return
            batch.extend(more)
            rows += sum(request.x.shape[0] for request in more)

    def _fill(self, batch: list[_Request], until: float) -> None:
        """In the leader's thread, before its batch runs: add calls that queue until the
        monotonic time `until`, or until the batch holds max_batch_size rows."""
        rows = sum(request.x.shape[0] for request in batch)
        while rows < self.max_batch_size:
            with self._lock:
                more = self._take(self.max_batch_size - rows, at_least_one=False)
            batch.extend(more)
            rows += sum(request.x.shape[0] for request in more)
            remaining = until - time.monotonic()
            if rows >= self.max_batch_size or remaining <= 0:
                return
            time.sleep(min(remaining, 0.0005))

    def _take(self, max_rows: int, at_least_one: bool = True) -> list[_Request]:
        """Under the lock: pop queued calls up to max_rows rows (and at least one, however many
        rows it has, if at_least_one), dropping those whose deadline has passed."""
        now = time.monotonic()
        batch: list[_Request] = []
        rows = 0
        while self._queue:
            request = self._queue[0]
            if request.deadline is not None and request.deadline <= now:
                self._queue.popleft()
                request.taken = True
                self.requests_expired += 1
                request.error = DeadlineExpired("deadline passed before scoring")
                request.woken.set()
                continue
            if rows + request.x.shape[0] > max_rows and (batch or not at_least_one):
                break
            self._queue.popleft()
            request.taken = True
            batch.append(request)
            rows += request.x.shape[0]
        return batch
