"""SIGTERM under load against a real server process: every accepted call is answered (streams
opened before the signal keep being served), new calls are refused, exit 0 within the grace; with
--drain-s, calls go on being answered while readiness says NOT_SERVING, until a second signal."""

from __future__ import annotations

import queue
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2_pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from tests.support.model_builder import NUM_FEATURES, ModelFiles, numpy_forward
from tests.support.server_process import ServerProcess
from tests.support.waiting import poll, wait_until

EXAMPLES = np.random.default_rng(5).normal(0, 1.5, (16, NUM_FEATURES)).astype(np.float32)
GRACE_S = 20.0
STREAMS = 4
MESSAGES_AFTER_SIGNAL = 40


class StreamSession:
    """One PredictStream fed a request at a time."""

    def __init__(self, stub: predictor_pb2_grpc.PredictorStub) -> None:
        self._requests: queue.Queue[pb.PredictRequest | None] = queue.Queue()
        self._responses = stub.PredictStream(iter(self._requests.get, None), timeout=60)

    def ask(self, row: int) -> pb.PredictResponse:
        self._requests.put(pb.PredictRequest(features=EXAMPLES[row], id=str(row)))
        return next(self._responses)

    def close(self) -> list[pb.PredictResponse]:
        """End the request side; the stream must then finish with OK (else RpcError)."""
        self._requests.put(None)
        return list(self._responses)


class UnaryCallers:
    """Threads calling back to back until refused; every outcome recorded. `call(row)` makes
    one call (Predict by default) and returns the answer."""

    def __init__(self, stub: predictor_pb2_grpc.PredictorStub, threads: int, call=None) -> None:
        self.answers: list[tuple[int, object]] = []
        self.refusals: list[tuple[float, grpc.StatusCode, str]] = []
        self._one_call = call or (
            lambda row: stub.Predict(pb.PredictRequest(features=EXAMPLES[row]), timeout=30)
        )
        self._threads = [
            threading.Thread(target=self._call, args=(index,), daemon=True)
            for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _call(self, row: int) -> None:
        while True:
            row = (row + 1) % len(EXAMPLES)
            try:
                answer = self._one_call(row)
            except grpc.RpcError as error:
                self.refusals.append((time.monotonic(), error.code(), error.details()))
                return
            self.answers.append((row, answer))

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60)


def _check(row: int, answer: pb.PredictResponse, weights) -> None:
    expected = numpy_forward(weights, EXAMPLES[row : row + 1], "classification")
    np.testing.assert_allclose(answer.probabilities, expected["probabilities"][0], atol=1e-5)


def test_sigterm_under_load_answers_accepted_calls_and_exits_zero(test_models: ModelFiles):
    weights = test_models.classification_weights
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--grace-s", str(GRACE_S), "--workers", "16", "--max-inflight", "12"]
    )  # fmt: skip
    server.wait_ready()
    channel = grpc.insecure_channel(server.target)
    stub = predictor_pb2_grpc.PredictorStub(channel)
    try:
        streams = [StreamSession(stub) for _ in range(STREAMS)]
        for index, stream in enumerate(streams):  # accepted: each has had an answer
            _check(index, stream.ask(index), weights)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        callers = UnaryCallers(stub, threads=4)
        poll(lambda: len(callers.answers) >= 200, 30, interval_s=0.01)
        signalled_at = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_for("stopping: health NOT_SERVING")
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        callers.join()
        # Streams accepted before the signal are still served through the grace period.
        for message in range(MESSAGES_AFTER_SIGNAL):
            for index, stream in enumerate(streams):
                row = (index + message) % len(EXAMPLES)
                answer = stream.ask(row)
                assert answer.id == str(row)
                _check(row, answer, weights)
        for stream in streams:
            assert stream.close() == []
        exit_code = server.process.wait(timeout=GRACE_S + 10)
        exited_after = time.monotonic() - signalled_at
    finally:
        channel.close()
        server.stop()
    assert exit_code == 0
    assert exited_after < GRACE_S, f"exited {exited_after:.1f} s after SIGTERM"
    assert "stopped" in server.lines[-1]
    for row, answer in callers.answers:
        _check(row, answer, weights)
    # Each caller ends on its first refusal: a call made after shutdown began, refused with
    # UNAVAILABLE (which retry policies retry), never CANCELLED. A handler's call is cut only
    # when the grace period runs out, and the server exited long before that.
    assert len(callers.refusals) == 4
    for refused_at, code, details in callers.refusals:
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert refused_at > signalled_at


def _model_infer(stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub, row: int):
    request = v2_pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="x", datatype="FP32", shape=(1, NUM_FEATURES))
    request.raw_input_contents.append(EXAMPLES[row : row + 1].tobytes())
    return stub.ModelInfer(request, timeout=30)


@pytest.mark.parametrize("round_", range(2))
def test_sigterm_under_v2_load_answers_or_refuses_with_unavailable(test_models, round_):
    # 16 clients calling ModelInfer when SIGTERM came saw 3–13 calls CANCELLED before the
    # server refused calls itself during shutdown.
    server = ServerProcess(
        ["--model", str(test_models.classification), "--name", "iris",
         "--grace-s", str(GRACE_S), "--workers", "24", "--max-inflight", "20"]
    )  # fmt: skip
    server.wait_ready()
    channels = [grpc.insecure_channel(server.target) for _ in range(4)]
    stubs = [grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    try:
        callers = [
            UnaryCallers(None, 4, call=lambda row, stub=stub: _model_infer(stub, row))
            for stub in stubs
        ]
        poll(lambda: sum(len(c.answers) for c in callers) >= 400, 30, interval_s=0.01)
        signalled_at = time.monotonic()
        server.signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=GRACE_S + 10)
        for caller in callers:
            caller.join()
    finally:
        for channel in channels:
            channel.close()
        server.stop()
    assert exit_code == 0
    refusals = [refusal for caller in callers for refusal in caller.refusals]
    assert len(refusals) == 16
    assert {code for _, code, _ in refusals} == {grpc.StatusCode.UNAVAILABLE}, (
        sorted((round(t - signalled_at, 3), c.name) for t, c, _ in refusals),
        server.log()[-600:],
    )
    assert all(len(answer.raw_output_contents) == 2 for c in callers for _, answer in c.answers)


def test_drain_answers_calls_while_unready_until_a_second_signal(test_models: ModelFiles):
    weights = test_models.classification_weights
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--drain-s", "600", "--grace-s", str(GRACE_S), "--workers", "16", "--max-inflight", "12"]
    )  # fmt: skip
    server.wait_ready()
    channel = grpc.insecure_channel(server.target)
    stub = predictor_pb2_grpc.PredictorStub(channel)
    health_stub = health_pb2_grpc.HealthStub(channel)
    try:
        watch = health_stub.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        callers = UnaryCallers(stub, threads=4)
        server.signal(signal.SIGTERM)
        server.wait_for("draining: readiness NOT_SERVING")
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        liveness = health_stub.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert liveness.status == health_pb2.HealthCheckResponse.SERVING

        # Still answering: the callers go on, and a new connection is served too.
        answered_at_drain = len(callers.answers)
        wait_until(
            lambda: len(callers.answers) >= answered_at_drain + 100,
            "calls answered while draining",
            60,
            interval_s=0.01,
        )
        with grpc.insecure_channel(server.target) as fresh:
            answer = predictor_pb2_grpc.PredictorStub(fresh).Predict(
                pb.PredictRequest(features=EXAMPLES[3]), timeout=30
            )
        _check(3, answer, weights)
        assert callers.refusals == []

        server.signal(signal.SIGTERM)  # the second signal ends the 600 s drain now
        server.wait_for("second stop signal: draining cut short")
        exit_code = server.process.wait(timeout=GRACE_S + 10)
        callers.join()
    finally:
        channel.close()
        server.stop()
    assert exit_code == 0
    assert "stopped" in server.lines[-1]
    for row, answer in callers.answers:
        _check(row, answer, weights)
    assert len(callers.refusals) == 4  # each caller ended on a call made after the stop


@pytest.mark.slow
def test_signals_in_quick_succession_never_wedge_the_server(test_models: ModelFiles):
    # A handler that called Event.set() deadlocked when a signal landed inside that Event's own
    # wait(): the 9th of 20 such cycles hung before the handlers only counted.
    for cycle in range(25):
        server = ServerProcess(["--model", str(test_models.classification), "--drain-s", "600"])
        try:
            server.wait_ready()
            server.signal(signal.SIGTERM)
            server.wait_for("draining: readiness NOT_SERVING")
            server.signal(signal.SIGHUP)
            server.signal(signal.SIGTERM)
            exit_code = server.process.wait(timeout=30)
        finally:
            server.stop()
        assert exit_code == 0, f"cycle {cycle}:\n{server.log()}"
