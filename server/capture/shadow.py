"""Shadow scoring: a model's shadow version (server/models/shadow.py) scores the sampled calls
its served version answered, off the response path, and its answers go to the capture store
beside theirs (shadow-calls-* files), where the join compares the pair (capture/quality.py).

One thread and a bounded queue: the call only hands over references (a full queue drops the
shadow's share of that call, counted); the thread sleeps until a call is queued, lets 20 ms
gather more, and scores them in one run per version (each call's latency in the store is its
share of that run); a shadow that raises is logged (throttled) and counted; neither ever
reaches the client. The thread
shares the serving cores: what a shadow costs the calls is its CPU, which `bench/serve.py`
shows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from bnserve.server.capture.writer import CaptureWriter
from bnserve.server.observability.logs import LogThrottle
from bnserve.server.plane.inputs import ModelInput, concatenate, rows

log = logging.getLogger(__name__)

QUEUE_CALLS = 256
DRAIN_INTERVAL_S = 0.02  # the shadow scores what is queued this often
MAX_BATCH_ROWS = 256  # rows of one shadow run at most


class _Work(NamedTuple):
    servable: Any  # server/models/servable.py's Servable (run, model)
    x: ModelInput
    ids: str | Sequence[str]


class ShadowScorer:
    """Scores queued calls with their model's shadow and offers the answers to `writer`."""

    def __init__(self, writer: CaptureWriter, queue_calls: int = QUEUE_CALLS) -> None:
        self._writer = writer
        self._queue: queue.Queue[_Work | None] = queue.Queue(queue_calls)
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._warnings = LogThrottle(10.0)
        self._stopping = threading.Event()
        self.scored = 0
        self.failed = 0
        self.dropped = 0

    def offer(self, servable: Any, x: ModelInput, ids: str | Sequence[str]) -> None:
        """Never blocks: a full queue drops the call's shadow scoring (counted)."""
        try:
            self._queue.put_nowait(_Work(servable, x, ids))
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (before the writer stops): the run in progress finishes, what is
        still queued is dropped (counted), so a slow shadow never holds up a shutdown."""
        self._stopping.set()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def idle(self) -> bool:
        """Nothing queued or being scored (tests)."""
        return self._queue.unfinished_tasks == 0

    def _run(self) -> None:
        """Sleep until a call is queued (no wake-ups while no shadow is asked for), let
        DRAIN_INTERVAL_S gather more, then score what is queued: the calls of one shadow
        version in one run (at most MAX_BATCH_ROWS rows), then each call's rows offered to the
        store."""
        while True:
            work = self._queue.get()  # blocks while nothing is queued; stop() queues None
            if work is not None:
                self._stopping.wait(DRAIN_INTERVAL_S)
            batch: list[_Work] = []
            while True:
                if work is None or self._stopping.is_set():
                    self.dropped += len(batch) + (work is not None)
                    for _ in range(len(batch) + 1):
                        self._queue.task_done()
                    if work is None:
                        return
                    batch = []
                else:
                    if batch and (
                        work.servable is not batch[0].servable
                        or sum(rows(w.x) for w in batch) + rows(work.x) > MAX_BATCH_ROWS
                    ):
                        self._done(batch)
                        batch = []
                    batch.append(work)
                try:
                    work = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._done(batch)

    def _done(self, batch: list[_Work]) -> None:
        try:
            self._score(batch)
        finally:
            for _ in batch:
                self._queue.task_done()

    def _score(self, batch: list[_Work]) -> None:
        servable = batch[0].servable
        x = concatenate([work.x for work in batch])
        started = time.perf_counter_ns()
        try:
            outputs = servable.run(x, None, batchable=False)
        except Exception as error:  # a shadow's failure is its own: counted, never raised
            self.failed += len(batch)
            held_back = self._warnings.admit("failed")
            if held_back is not None:
                more = f" ({held_back} more since the last line)" if held_back else ""
                log.warning(
                    "shadow version %s of model %s failed: %s%s",
                    servable.model.version,
                    servable.model.name,
                    error,
                    more,
                )
            return
        latency_ns = (time.perf_counter_ns() - started) // len(batch)  # each call's share
        self.scored += len(batch)
        first = 0
        for work in batch:
            count = rows(work.x)
            answer = [output[first : first + count] for output in outputs]
            first += count
            self._writer.offer(servable.model, work.x, answer, work.ids, latency_ns, shadow=True)
