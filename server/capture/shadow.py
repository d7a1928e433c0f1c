"""Shadow scoring: a model's shadow version (server/models/shadow.py) scores the sampled calls
its served version answered, off the response path, and its answers go to the capture store
beside theirs (shadow-calls-* files), where the join compares the pair (capture/quality.py).

One thread and a bounded queue: the call only hands over references (a full queue drops the
shadow's share of that call, counted); a shadow that raises is logged (throttled) and
counted; neither ever reaches the client. The thread shares the serving cores: what a shadow
costs the calls is its CPU, which `bench/serve.py` would show.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from bnserve.server.capture.writer import CaptureWriter
from bnserve.server.observability.logs import LogThrottle

log = logging.getLogger(__name__)

QUEUE_CALLS = 256


class _Work(NamedTuple):
    servable: Any  # server/models/servable.py's Servable (run, model)
    x: np.ndarray
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

    def offer(self, servable: Any, x: np.ndarray, ids: str | Sequence[str]) -> None:
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
        """Nothing queued (tests)."""
        return self._queue.unfinished_tasks == 0

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            try:
                if work is None:
                    return
                if self._stopping.is_set():
                    self.dropped += 1
                else:
                    self._score(work)
            finally:
                self._queue.task_done()

    def _score(self, work: _Work) -> None:
        started = time.perf_counter_ns()
        try:
            outputs = work.servable.run(work.x, None, batchable=False)
        except Exception as error:  # a shadow's failure is its own: counted, never raised
            self.failed += 1
            held_back = self._warnings.admit("failed")
            if held_back is not None:
                more = f" ({held_back} more since the last line)" if held_back else ""
                log.warning(
                    "shadow version %s of model %s failed: %s%s",
                    work.servable.model.version,
                    work.servable.model.name,
                    error,
                    more,
                )
            return
        latency_ns = time.perf_counter_ns() - started
        self.scored += 1
        self._writer.offer(work.servable.model, work.x, outputs, work.ids, latency_ns, shadow=True)
