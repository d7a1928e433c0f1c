"""Overload is predictable: refused at once when full, health answers while saturated,
client deadlines are honoured."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles
from tests.support.model_gate import ModelGate
from tests.support.waiting import wait_until

REQUEST = pb.PredictRequest(model_name="iris", features=[0.25] * NUM_FEATURES)
HOLD_S = 2.0  # timeouts of calls made while the model is held


@pytest.fixture
def slow_server(test_models: ModelFiles) -> Iterator[tuple[Server, ModelGate]]:
    """Batching, room for 2 inference calls, and the model's runs held until the gate opens:
    easy to saturate."""
    settings = ServerSettings(batching=True, max_batch_size=64, workers=6, max_inflight=2)
    server = start_server(settings, {"iris": test_models.classification})
    gate = ModelGate(server.repository.get("iris").batcher)
    yield server, gate
    gate.release()
    server.stop(0)


def test_saturated_server_refuses_at_once_and_health_still_answers(
    slow_server: tuple[Server, ModelGate],
) -> None:
    slow_server, gate = slow_server
    with grpc.insecure_channel(f"127.0.0.1:{slow_server.port}") as channel:
        predictor = predictor_pb2_grpc.PredictorStub(channel)
        admitted = [predictor.Predict.future(REQUEST, timeout=30) for _ in range(2)]
        wait_until(
            lambda: slow_server.limiter.in_flight >= 2,
            "the two calls admitted",
            10,
            interval_s=0.01,
        )
        with pytest.raises(grpc.RpcError) as raised:
            predictor.Predict(REQUEST, timeout=HOLD_S / 2)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_inflight" in raised.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=HOLD_S / 2)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = inference.ModelMetadata(v2.ModelMetadataRequest(name="iris"), timeout=HOLD_S / 2)
        assert metadata.name == "iris"
        assert not any(call.done() for call in admitted)  # all of the above ran while saturated
        gate.release()
        assert all(call.result().class_name for call in admitted)


def test_calls_beyond_max_concurrent_rpcs_are_refused_at_once(test_models: ModelFiles) -> None:
    settings = ServerSettings(
        batching=True, workers=6, max_inflight=2, max_concurrent_rpcs=3, max_waiting_calls=2
    )
    server = start_server(settings, {"iris": test_models.classification})
    gate = ModelGate(server.repository.get("iris").batcher)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            predictor = predictor_pb2_grpc.PredictorStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            # Three calls held open: a stream (one message answered, then kept open) and two
            # calls admitted and held at the model's gate.
            stream_requests: queue.Queue[pb.PredictRequest | None] = queue.Queue()
            stream_requests.put(REQUEST)
            stream = predictor.PredictStream(iter(stream_requests.get, None), timeout=30)
            assert next(stream).class_name  # streams bypass the batcher and its gate
            admitted = [predictor.Predict.future(REQUEST, timeout=30) for _ in range(2)]
            wait_until(
                lambda: server.limiter.in_flight >= 2, "the two calls admitted", 10, interval_s=0.01
            )
            with pytest.raises(grpc.RpcError) as raised:
                health.Check(health_pb2.HealthCheckRequest(service=""), timeout=HOLD_S / 2)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert not any(call.done() for call in admitted)  # refused, not queued behind them
            gate.release()
            stream_requests.put(None)
            assert list(stream) == []
            assert all(call.result().class_name for call in admitted)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        gate.release()
        server.stop(0)


def test_deadline_is_honoured_and_expired_call_not_scored(
    slow_server: tuple[Server, ModelGate],
) -> None:
    slow_server, gate = slow_server
    batcher = slow_server.repository.get("iris").batcher
    with grpc.insecure_channel(f"127.0.0.1:{slow_server.port}") as channel:
        predictor = predictor_pb2_grpc.PredictorStub(channel)
        holder = predictor.Predict.future(REQUEST, timeout=30)
        wait_until(lambda: gate.waiting == 1, "the first call holds the model")
        with pytest.raises(grpc.RpcError) as raised:
            predictor.Predict(REQUEST, timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: batcher.requests_expired == 1, "the expired call dropped")
        gate.release()
        assert holder.result().class_name
        assert gate.runs == [1]  # nothing was scored for the caller that had given up
        answer = predictor.Predict(REQUEST, timeout=HOLD_S * 3)
        np.testing.assert_allclose(sum(answer.probabilities), 1.0, rtol=1e-5)
