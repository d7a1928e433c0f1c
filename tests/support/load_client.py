"""A Python load generator for correctness under load (not speed): `calls` single-example
Predict calls with `concurrency` in flight, every answer checked against the expected one."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc


@dataclass
class LoadResult:
    answered: int = 0
    wrong: int = 0  # answered OK but not with the expected values
    errors: Counter[str] = field(default_factory=Counter)  # status code name → count


def run_load(
    channel: grpc.Channel,
    calls: int,
    concurrency: int,
    examples: np.ndarray,
    expected_probabilities: np.ndarray,
    timeout_s: float = 30,
) -> LoadResult:
    """examples: (R, F) float32, cycled; expected_probabilities: (R, C) for those rows."""
    stub = predictor_pb2_grpc.PredictorStub(channel)
    requests = [pb.PredictRequest(features=row) for row in examples]
    slots = threading.BoundedSemaphore(concurrency)
    lock = threading.Lock()
    result = LoadResult()
    all_done = threading.Event()
    outstanding = [calls]

    def finished(future: grpc.Future, row: int) -> None:
        try:
            answer = future.result()
            right = np.allclose(answer.probabilities, expected_probabilities[row], atol=1e-5)
            with lock:
                result.answered += 1
                result.wrong += not right
        except grpc.RpcError as error:
            with lock:
                result.errors[error.code().name] += 1
        slots.release()
        with lock:
            outstanding[0] -= 1
            if outstanding[0] == 0:
                all_done.set()

    for call in range(calls):
        slots.acquire()
        row = call % len(requests)
        future = stub.Predict.future(requests[row], timeout=timeout_s)
        future.add_done_callback(lambda done, row=row: finished(done, row))
    all_done.wait()
    return result
