"""Dynamic batching: never waits for batch-mates that are not there, batches form only from
calls that queue behind a busy model, each caller gets exactly its own rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.batching import DynamicBatcher
from bnserve.server.plane.errors import DeadlineExpired, Overloaded
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles
from tests.support.model_gate import ModelGate
from tests.support.waiting import wait_until

LONG_DELAY_MS = 10_000.0  # a batch that waited for batch-mates would outlive every deadline


def _tagging_predict(x: np.ndarray) -> list[np.ndarray]:
    """Row i's answer is a function of row i only, so a mix-up shows."""
    return [x * 2.0, x[:, 0].astype(np.int64)]


def _rows(caller: int) -> np.ndarray:
    return np.arange(caller * 10, caller * 10 + 3 * (1 + caller % 3), dtype=np.float32).reshape(
        -1, 3
    )


def test_lone_calls_run_at_once_whatever_the_delay() -> None:
    batcher = DynamicBatcher(
        _tagging_predict, max_batch_size=64, max_delay_s=LONG_DELAY_MS / 1000, max_queue=8
    )
    for caller in range(8):
        doubled, _ = batcher.score(_rows(caller), timeout_s=2.0)
        np.testing.assert_array_equal(doubled, _rows(caller) * 2.0)
    assert (batcher.batches_run, batcher.requests_batched, batcher.queued) == (8, 0, 0)


def test_calls_queued_behind_a_busy_model_run_as_one_batch_and_get_their_own_rows() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=64, max_delay_s=0.0, max_queue=64)
    gate = ModelGate(batcher)
    callers = [_rows(caller) for caller in range(9)]
    with ThreadPoolExecutor(max_workers=len(callers)) as pool:
        first = pool.submit(batcher.score, callers[0])
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        rest = [pool.submit(batcher.score, x) for x in callers[1:]]
        wait_until(lambda: batcher.queued == 8, "eight calls queued behind it")
        gate.release()
        answers = [first.result(10)] + [future.result(10) for future in rest]
    for x, (doubled, first_column) in zip(callers, answers, strict=True):
        np.testing.assert_array_equal(doubled, x * 2.0)
        np.testing.assert_array_equal(first_column, x[:, 0].astype(np.int64))
    assert gate.runs == [callers[0].shape[0], sum(x.shape[0] for x in callers[1:])]
    assert batcher.requests_batched == 8


def test_calls_that_queue_while_the_next_batch_gathers_join_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader of the next batch yields the CPU before it runs; a call that reaches the
    queue meanwhile (it was being decoded when the model freed) rides in the same run."""
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=64, max_delay_s=0.0, max_queue=64)
    gate = ModelGate(batcher)
    callers = [_rows(caller) for caller in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        late: list = []

        def a_call_arrives_during_the_first_yield() -> None:
            if not late:
                late.append(pool.submit(batcher.score, callers[2]))
                wait_until(lambda: batcher.queued == 1, "the late call queued")

        first = pool.submit(batcher.score, callers[0])
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        second = pool.submit(batcher.score, callers[1])
        wait_until(lambda: batcher.queued == 1, "the second call queued behind it")
        monkeypatch.setattr(
            "bnserve.server.plane.batching.os.sched_yield", a_call_arrives_during_the_first_yield
        )
        gate.release()
        answers = [first.result(10), second.result(10), late[0].result(10)]
    for x, (doubled, _) in zip(callers, answers, strict=True):
        np.testing.assert_array_equal(doubled, x * 2.0)
    assert gate.runs == [callers[0].shape[0], callers[1].shape[0] + callers[2].shape[0]]


def test_batches_hold_at_most_max_batch_size_rows() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=4, max_delay_s=0.0, max_queue=64)
    gate = ModelGate(batcher)
    with ThreadPoolExecutor(max_workers=11) as pool:
        first = pool.submit(batcher.score, np.ones((1, 3), np.float32))
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        rest = [pool.submit(batcher.score, np.full((1, 3), i, np.float32)) for i in range(10)]
        wait_until(lambda: batcher.queued == 10, "ten calls queued")
        gate.release()
        for i, future in enumerate(rest):
            np.testing.assert_array_equal(future.result(10)[0], np.full((1, 3), 2.0 * i))
        first.result(10)
    assert gate.runs == [1, 4, 4, 2]


def test_a_failing_run_fails_every_member_and_the_model_goes_on() -> None:
    calls = []

    def flaky_predict(x: np.ndarray) -> list[np.ndarray]:
        calls.append(x.shape[0])
        if len(calls) == 2:
            raise RuntimeError("onnxruntime failed")
        return [x]

    batcher = DynamicBatcher(flaky_predict, max_batch_size=8, max_delay_s=0.0, max_queue=8)
    gate = ModelGate(batcher)
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(batcher.score, np.ones((1, 2), np.float32))
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        queued = [pool.submit(batcher.score, np.ones((1, 2), np.float32)) for _ in range(2)]
        wait_until(lambda: batcher.queued == 2, "two calls queued")
        gate.release()
        assert first.result(10)[0].shape == (1, 2)
        for future in queued:
            with pytest.raises(RuntimeError, match="onnxruntime failed"):
                future.result(10)
    assert batcher.score(np.ones((1, 2), np.float32))[0].shape == (1, 2)


def test_full_queue_refuses_at_once() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=1, max_delay_s=0.0, max_queue=2)
    gate = ModelGate(batcher)
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            first = pool.submit(batcher.score, np.zeros((1, 2), np.float32))
            wait_until(lambda: gate.waiting == 1, "the first call holds the model")
            queued = [pool.submit(batcher.score, np.zeros((1, 2), np.float32)) for _ in range(2)]
            wait_until(lambda: batcher.queued == 2, "two calls queued")
            with pytest.raises(Overloaded, match="queue is full"):
                batcher.score(np.zeros((1, 2), np.float32))
            gate.release()
            assert [f.result(10)[0].shape for f in [first, *queued]] == [(1, 2)] * 3
    finally:
        gate.release()


def test_queued_call_past_its_deadline_is_not_scored() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=8, max_delay_s=0.0, max_queue=8)
    gate = ModelGate(batcher)
    with ThreadPoolExecutor(max_workers=1) as pool:
        holder = pool.submit(batcher.score, np.ones((1, 2), np.float32))
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        with pytest.raises(DeadlineExpired):
            batcher.score(np.full((1, 2), 7.0, np.float32), timeout_s=0.05)
        assert (batcher.requests_expired, batcher.queued) == (1, 0)
        gate.release()
        holder.result(10)
    assert gate.runs == [1]  # the expired call's row never reached the model
    np.testing.assert_array_equal(batcher.score(np.ones((1, 2), np.float32))[0], np.full((1, 2), 2))
    batcher.close(timeout_s=5)


def _batching_server(test_models: ModelFiles, **changes: object) -> Server:
    settings = ServerSettings(
        batching=True, max_batch_delay_ms=LONG_DELAY_MS, workers=24, max_inflight=20
    ).replace(**changes)
    return start_server(settings, {"iris": test_models.classification}, metrics=ServerMetrics())


def test_lone_and_one_after_another_calls_are_answered_despite_a_10_s_delay(
    test_models: ModelFiles,
) -> None:
    server = _batching_server(test_models)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            for index in range(1 + 8):  # one lone call, then eight one after another
                request = pb.PredictRequest(
                    model_name="iris", features=[0.1 * index] * NUM_FEATURES
                )
                answer = stub.Predict(request, timeout=2.0)
                np.testing.assert_allclose(sum(answer.probabilities), 1.0, rtol=1e-5)
        assert server.repository.get("iris").batcher.batches_run == 9
    finally:
        server.stop(0)


def test_concurrent_callers_over_grpc_are_batched_and_get_their_own_answers(
    test_models: ModelFiles,
) -> None:
    server = _batching_server(test_models, max_batch_delay_ms=0.0)
    rows = np.random.default_rng(5).normal(0, 2, (64, NUM_FEATURES)).astype(np.float32)
    try:
        servable = server.repository.get("iris")
        gate = ModelGate(servable.batcher)
        alone = servable.model.predict
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)

            def call(index: int) -> pb.PredictResponse:
                return stub.Predict(
                    pb.PredictRequest(model_name="iris", features=rows[index], id=str(index)),
                    timeout=30,
                )

            with ThreadPoolExecutor(max_workers=16) as pool:
                futures = [pool.submit(call, index) for index in range(len(rows))]
                wait_until(lambda: servable.batcher.queued >= 8, "calls queued behind the model")
                gate.release()
                responses = [future.result(30) for future in futures]
        for index, response in enumerate(responses):
            probabilities, labels = alone(rows[index : index + 1])
            assert response.id == str(index)
            np.testing.assert_allclose(
                response.probabilities, probabilities[0], rtol=1e-6, atol=1e-7
            )
            assert response.label == labels[0]
        assert max(gate.runs) >= 8 and sum(gate.runs) == len(rows)
        registry = server.metrics.registry
        labels = {"model": "iris"}
        assert registry.get_sample_value("bnserve_batch_size_sum", labels) == len(rows)
        assert registry.get_sample_value("bnserve_batch_size_count", labels) == len(gate.runs)
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
        assert servable.batcher.batches_run == 0  # a stream's messages are scored in order
        expected = servable.model.predict(rows)[0]
        np.testing.assert_allclose([r.probabilities for r in responses], expected, rtol=1e-6)
    finally:
        server.stop(0)


def test_close_waits_for_queued_calls() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=8, max_delay_s=0.0, max_queue=8)
    gate = ModelGate(batcher)
    with ThreadPoolExecutor(max_workers=2) as pool:
        calls = [pool.submit(batcher.score, np.ones((1, 2), np.float32)) for _ in range(2)]
        wait_until(lambda: gate.waiting == 1 and batcher.queued == 1, "one running, one queued")
        closed = threading.Thread(target=batcher.close)
        closed.start()
        closed.join(0.05)
        assert closed.is_alive()  # still a call queued
        gate.release()
        closed.join(10)
        assert not closed.is_alive()
        assert all(call.result(10)[0].shape == (1, 2) for call in calls)


def test_rows_that_cannot_be_stacked_fail_their_batch_not_the_batcher() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=8, max_delay_s=0.0, max_queue=8)
    gate = ModelGate(batcher)
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(batcher.score, np.ones((1, 3), np.float32))
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        mismatched = [pool.submit(batcher.score, np.ones((1, n), np.float32)) for n in (3, 4)]
        wait_until(lambda: batcher.queued == 2, "two calls queued")
        gate.release()
        first.result(10)
        for future in mismatched:
            with pytest.raises(ValueError, match="dimension"):
                future.result(10)
    np.testing.assert_array_equal(batcher.score(np.ones((1, 3), np.float32))[0], np.full((1, 3), 2))


def test_a_delay_lets_a_queued_batch_fill_but_never_holds_a_full_one() -> None:
    batcher = DynamicBatcher(_tagging_predict, max_batch_size=4, max_delay_s=0.2, max_queue=64)
    gate = ModelGate(batcher)
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(batcher.score, np.ones((1, 3), np.float32))
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        two = [pool.submit(batcher.score, np.ones((1, 3), np.float32)) for _ in range(2)]
        wait_until(lambda: batcher.queued == 2, "two calls queued")
        gate.release()
        for future in [first, *two]:
            future.result(10)
        assert gate.runs == [1, 2]  # the two waited out the delay together; nobody else came
    gate = ModelGate(batcher)  # and again, with a full batch queued behind the model
    batcher.max_delay_s = LONG_DELAY_MS / 1000
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(batcher.score, np.ones((1, 3), np.float32))
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        four = [pool.submit(batcher.score, np.ones((1, 3), np.float32)) for _ in range(4)]
        wait_until(lambda: batcher.queued == 4, "four calls queued")
        gate.release()
        for future in [first, *four]:
            future.result(2)  # a full batch runs at once, whatever the 10 s delay says
        assert gate.runs == [1, 4]


def test_the_call_that_frees_the_model_returns_while_the_next_batch_fills() -> None:
    batcher = DynamicBatcher(
        _tagging_predict, max_batch_size=4, max_delay_s=LONG_DELAY_MS / 1000, max_queue=64
    )
    gate = ModelGate(batcher)
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(batcher.score, np.ones((1, 3), np.float32))
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        queued = [pool.submit(batcher.score, np.ones((1, 3), np.float32)) for _ in range(2)]
        wait_until(lambda: batcher.queued == 2, "two calls queued")
        gate.release()
        first.result(5)  # answered at once, while its successors wait to fill their batch
        assert not any(future.done() for future in queued)
        queued += [pool.submit(batcher.score, np.ones((1, 3), np.float32)) for _ in range(2)]
        for future in queued:
            future.result(5)  # the batch filled to max_batch_size and ran
    assert gate.runs == [1, 4]


def _hammer(calls_per_thread: int, threads: int, seed: int) -> None:
    """Many threads, rows of 1–3, some with deadlines too short to make: every call gets its
    own rows or DeadlineExpired (only if it had a deadline), and the batcher ends idle."""

    def sleepy_predict(x: np.ndarray) -> list[np.ndarray]:
        time.sleep(0.0002 * (x.shape[0] % 3))  # releases the GIL, as onnxruntime does
        return _tagging_predict(x)

    batcher = DynamicBatcher(sleepy_predict, max_batch_size=8, max_delay_s=0.0, max_queue=1024)

    def caller(index: int) -> tuple[int, int]:
        rng = np.random.default_rng(seed + index)
        answered = expired = 0
        for call in range(calls_per_thread):
            x = np.full((int(rng.integers(1, 4)), 3), index * 1000 + call, np.float32)
            timeout_s = 0.0005 if rng.random() < 0.1 else None
            try:
                doubled, _ = batcher.score(x, timeout_s)
            except DeadlineExpired:
                assert timeout_s is not None
                expired += 1
                continue
            np.testing.assert_array_equal(doubled, x * 2.0)
            answered += 1
        return answered, expired

    with ThreadPoolExecutor(max_workers=threads) as pool:
        totals = list(pool.map(caller, range(threads)))
    assert sum(a + e for a, e in totals) == calls_per_thread * threads
    batcher.close(timeout_s=10)
    assert batcher.queued == 0 and not batcher._busy  # idle: nothing lost in a hand-off
    assert batcher.requests_batched > 0  # the hand-offs under test really happened


def test_many_threads_each_get_their_own_rows() -> None:
    _hammer(calls_per_thread=100, threads=12, seed=0)


@pytest.mark.slow
def test_many_threads_each_get_their_own_rows_soak() -> None:
    for seed in range(20):
        _hammer(calls_per_thread=500, threads=32, seed=seed * 100)
