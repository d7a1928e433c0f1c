"""Dynamic batching: each caller gets exactly its own rows, bounded queue, deadlines."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import start_server
from model_builder import NUM_FEATURES, ModelFiles

from server.batching import DynamicBatcher
from server.errors import DeadlineExpired, Overloaded
from server.gen.bnserve.v1 import predictor_pb2 as pb
from server.gen.bnserve.v1 import predictor_pb2_grpc
from server.settings import ServerSettings


def _tagging_predict(x: np.ndarray) -> list[np.ndarray]:
    """Row i's answer is a function of row i only, so a mix-up shows."""
    return [x * 2.0, x[:, 0].astype(np.int64)]


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.005)


def test_each_caller_gets_its_own_rows_in_order() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=16, max_delay_s=0.02, max_queue=64)
    try:
        callers = [np.arange(caller * 10, caller * 10 + 3 * (1 + caller % 3), dtype=np.float32)
                   .reshape(-1, 3) for caller in range(24)]  # fmt: skip
        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(batcher.score, callers))
        for x, (doubled, first_column) in zip(callers, answers, strict=True):
            np.testing.assert_array_equal(doubled, x * 2.0)
            np.testing.assert_array_equal(first_column, x[:, 0].astype(np.int64))
        assert batcher.batches_run < len(callers)  # some calls really were scored together
    finally:
        batcher.close()


def test_full_queue_refuses_at_once() -> None:
    release = threading.Event()

    def blocked_predict(x: np.ndarray) -> list[np.ndarray]:
        release.wait(10)
        return [x]

    batcher = DynamicBatcher(blocked_predict, max_batch_size=1, max_delay_s=0.0, max_queue=2)
    try:
        first = batcher.submit(np.zeros((1, 2), np.float32))
        _wait_until(lambda: first.running())  # the worker holds it; the queue is empty again
        queued = [batcher.submit(np.zeros((1, 2), np.float32)) for _ in range(2)]
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit(np.zeros((1, 2), np.float32))
        release.set()
        assert [f.result(10)[0].shape for f in [first, *queued]] == [(1, 2)] * 3
    finally:
        release.set()
        batcher.close()


def test_expired_request_is_not_scored() -> None:
    scored_rows = []

    def recording_predict(x: np.ndarray) -> list[np.ndarray]:
        scored_rows.append(x.copy())
        return [x]

    batcher = DynamicBatcher(recording_predict, max_batch_size=8, max_delay_s=0.3, max_queue=8)
    try:
        with pytest.raises(DeadlineExpired):
            batcher.score(np.full((1, 2), 7.0, np.float32), timeout_s=0.01)
        _wait_until(lambda: batcher.requests_expired == 1)
        assert scored_rows == []
        np.testing.assert_array_equal(
            batcher.score(np.ones((1, 2), np.float32))[0], np.ones((1, 2))
        )
    finally:
        batcher.close()


def test_concurrent_callers_over_grpc_get_their_own_answers(test_models: ModelFiles) -> None:
    settings = ServerSettings(batching=True, max_batch_delay_ms=5.0, workers=24, max_inflight=20)
    server = start_server(settings, {"iris": test_models.classification})
    rows = np.random.default_rng(5).normal(0, 2, (200, NUM_FEATURES)).astype(np.float32)
    try:
        batcher = server.repository.get("iris").batcher
        alone = server.repository.get("iris").model.predict
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)

            def call(index: int) -> pb.PredictResponse:
                return stub.Predict(
                    pb.PredictRequest(model_name="iris", features=rows[index], id=str(index))
                )

            with ThreadPoolExecutor(max_workers=16) as pool:
                responses = list(pool.map(call, range(len(rows))))
        for index, response in enumerate(responses):
            probabilities, labels = alone(rows[index : index + 1])
            assert response.id == str(index)
            np.testing.assert_allclose(
                response.probabilities, probabilities[0], rtol=1e-6, atol=1e-7
            )
            assert response.label == labels[0]
        assert batcher.batches_run < len(rows)  # batching really happened
    finally:
        server.stop(0)


def test_streams_bypass_the_batcher(test_models: ModelFiles) -> None:
    settings = ServerSettings(batching=True, max_batch_delay_ms=1000.0)
    server = start_server(settings, {"iris": test_models.classification})
    rows = np.random.default_rng(9).normal(0, 1, (5, NUM_FEATURES)).astype(np.float32)
    try:
        servable = server.repository.get("iris")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            requests = (pb.PredictRequest(model_name="iris", features=row) for row in rows)
            responses = list(stub.PredictStream(requests, timeout=30))
        assert servable.batcher.batches_run == 0  # none waited the 1 s batching delay
        expected = servable.model.predict(rows)[0]
        np.testing.assert_allclose([r.probabilities for r in responses], expected, rtol=1e-6)
    finally:
        server.stop(0)
