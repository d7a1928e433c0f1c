"""Per model version counts and cumulative durations, as Triton's ModelStatistics defines them.

The data plane records every call here, whatever the transport; gRPC (ModelStatistics) and
HTTP (/v2/models/{name}/stats) report the same figures. Durations are nanoseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Predict = Callable[[np.ndarray], list[np.ndarray]]

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
    compute_infer: the model run of an unbatched request; compute_output: choosing the
    requested outputs (and the top classes for class_count). inference_count counts examples,
    execution_count model runs.
    """

    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    parts: dict[str, Duration] = field(default_factory=dict)
    batches: tuple[BatchStats, ...] = ()


class ModelStats:
    """The running totals of one model version; thread-safe, ~0.3 µs a record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_inference_ms = 0
        self._inference_count = 0
        self._success = [0, 0]
        self._fail = [0, 0]
        # [count, ns] per part, in PARTS order
        self._parts = [[0, 0] for _ in PARTS]
        self._runs: dict[int, list[int]] = {}  # batch size → [runs, ns]

    def record_success(
        self, rows: int, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        with self._lock:
            self._inference_count += rows
            self._success[0] += 1
            self._success[1] += total_ns
            for part, ns in zip(
                self._parts, (queue_ns, input_ns, infer_ns, output_ns), strict=True
            ):
                part[0] += 1
                part[1] += ns
            self._last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            self._fail[0] += 1
            self._fail[1] += total_ns

    def timed(self, predict: Predict) -> Predict:
        """predict, counting each run and its duration under its batch size."""
        runs = self._runs
        lock = self._lock

        def timed_predict(x: np.ndarray) -> list[np.ndarray]:
            started = time.perf_counter_ns()
            outputs = predict(x)
            elapsed = time.perf_counter_ns() - started
            size = x.shape[0]
            with lock:
                run = runs.get(size)
                if run is None:
                    run = runs[size] = [0, 0]
                run[0] += 1
                run[1] += elapsed
            return outputs

        return timed_predict

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            batches = tuple(
                BatchStats(size, Duration(runs, ns))
                for size, (runs, ns) in sorted(self._runs.items())
            )
            return StatsSnapshot(
                last_inference_ms=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=sum(batch.compute_infer.count for batch in batches),
                success=Duration(*self._success),
                fail=Duration(*self._fail),
                parts={
                    name: Duration(*part) for name, part in zip(PARTS, self._parts, strict=True)
                },
                batches=batches,
            )
