"""Per model version counts and cumulative durations, as Triton's ModelStatistics defines them.

The data plane records every call here, whatever the transport; gRPC (ModelStatistics) and
HTTP (/v2/models/{name}/stats) report the same figures. Durations are nanoseconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bnserve.server.plane.batching import Predict
from bnserve.server.plane.inputs import ModelInput

# The parts of a successful request, in Triton's names.
PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Duration:
    """How many times something happened and its summed duration in nanoseconds."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchStats:
    """Model runs of `batch_size` examples and the time spent in them."""

    batch_size: int
    compute_infer: Duration


@dataclass(frozen=True)
class StatsSnapshot:
    """One model version's statistics at one moment.

    success/fail: whole requests; queue: admission plus the wait for a dynamic batch (a batched
    request's wait includes its batch's run); compute_input: validation of the input tensor;
    compute_infer: the model run of an unbatched request (batched runs are in `batches`);
    compute_output: counted, 0 ns (encoding the answer is the transport's, not timed).
    inference_count counts examples, execution_count model runs.
    """

    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    parts: dict[str, Duration] = field(default_factory=dict)
    batches: tuple[BatchStats, ...] = ()


# A thread's tally: the counts by slot below, and batch size → [runs, summed run ns].
Tally = tuple[list[int], dict[int, list[int]]]
# Slots of a thread's tally.
_ROWS, _SUCCESS, _SUCCESS_NS, _FAIL, _FAIL_NS, _QUEUE_NS, _INPUT_NS, _INFER_NS, _OUTPUT_NS = range(
    9
)


class ModelStats:
    """The running totals of one model version.

    Each thread adds to its own tally (no lock on the request path, ~0.5 µs a request); a
    snapshot sums the tallies. The data plane records each request (and, for unbatched
    requests, its run); the dynamic batcher's predict goes through `timed` so batched runs
    are counted too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the list of tallies, not their contents
        self._local = threading.local()
        self._tallies: list[Tally] = []
        self._last_inference_ms = 0

    def _tally(self) -> Tally:
        try:
            tally: Tally = self._local.tally  # threading.local attributes are untyped
            return tally
        except AttributeError:
            tally = ([0] * 9, {})
            self._local.tally = tally
            with self._lock:
                self._tallies.append(tally)
            return tally

    def record_success(
        self,
        rows: int,
        total_ns: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        ran: bool,
    ) -> None:
        """One successful request of `rows` examples; ran: infer_ns was its own model run."""
        try:
            counts, runs = self._local.tally
        except AttributeError:
            counts, runs = self._tally()
        counts[_ROWS] += rows
        counts[_SUCCESS] += 1
        counts[_SUCCESS_NS] += total_ns
        counts[_QUEUE_NS] += queue_ns
        counts[_INPUT_NS] += input_ns
        counts[_INFER_NS] += infer_ns
        counts[_OUTPUT_NS] += output_ns
        if ran:
            run = runs.get(rows)
            if run is None:
                run = runs[rows] = [0, 0]
            run[0] += 1
            run[1] += infer_ns
        self._last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        counts, _ = self._tally()
        counts[_FAIL] += 1
        counts[_FAIL_NS] += total_ns

    def timed(self, predict: Predict) -> Predict:
        """predict, counting each run and its duration under its batch size (batched runs)."""
        tally = self._tally

        def timed_predict(x: ModelInput) -> list[np.ndarray]:
            started = time.perf_counter_ns()
            outputs = predict(x)
            elapsed = time.perf_counter_ns() - started
            runs = tally()[1]
            run = runs.get(x.shape[0])
            if run is None:
                run = runs[x.shape[0]] = [0, 0]
            run[0] += 1
            run[1] += elapsed
            return outputs

        return timed_predict

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            tallies = list(self._tallies)
        counts = [0] * 9
        runs: dict[int, list[int]] = {}
        for thread_counts, thread_runs in tallies:
            for slot, value in enumerate(list(thread_counts)):
                counts[slot] += value
            for size, (number, ns) in list(thread_runs.items()):
                total = runs.setdefault(size, [0, 0])
                total[0] += number
                total[1] += ns
        batches = tuple(
            BatchStats(size, Duration(number, ns)) for size, (number, ns) in sorted(runs.items())
        )
        success = counts[_SUCCESS]
        part_ns = (counts[_QUEUE_NS], counts[_INPUT_NS], counts[_INFER_NS], counts[_OUTPUT_NS])
        return StatsSnapshot(
            last_inference_ms=self._last_inference_ms,
            inference_count=counts[_ROWS],
            execution_count=sum(batch.compute_infer.count for batch in batches),
            success=Duration(success, counts[_SUCCESS_NS]),
            fail=Duration(counts[_FAIL], counts[_FAIL_NS]),
            parts={name: Duration(success, ns) for name, ns in zip(PARTS, part_ns, strict=True)},
            batches=batches,
        )
