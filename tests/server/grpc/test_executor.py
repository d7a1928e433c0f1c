"""The server's pool under slow-loris and lying-length attacks (server/grpc/executor.py): stalled
calls hold no thread, are bounded in number and dropped after request_timeout_s; a message
announcing more than max_message_bytes is refused from its length prefix."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.server._compat import check_grpc_internals
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.settings import ServerSettings
from tests.support.certificates import Pki, make_pki
from tests.support.h2_attacker import StallingConnection
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles
from tests.support.server_process import ServerProcess
from tests.support.waiting import poll

PREDICT = "/bnserve.v1.Predictor/Predict"
STREAM = "/bnserve.v1.Predictor/PredictStream"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 4, 8  # grpc-status values on the wire
HEALTH_DEADLINE_S = 5.0


def _wait_for(condition, timeout_s: float = 60) -> bool:
    """Poll condition() every 50 ms until true or timeout_s (tests/support/waiting.py)."""
    return poll(condition, timeout_s, interval_s=0.05)


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_DEADLINE_S).status


def _predict(channel: grpc.Channel, metadata=None) -> pb.PredictResponse:
    stub = predictor_pb2_grpc.PredictorStub(channel)
    request = pb.PredictRequest(model_name="iris", features=np.zeros(NUM_FEATURES).tolist())
    return stub.Predict(request, timeout=HEALTH_DEADLINE_S, metadata=metadata)


@pytest.fixture()
def small_server(test_models: ModelFiles) -> Iterator:
    settings = ServerSettings(
        workers=4, max_inflight=2, stream_workers=2, request_timeout_s=2.0, max_waiting_calls=64
    )
    server = start_server(settings, {"iris": test_models.classification})
    yield server
    server.stop(0)


def test_the_pinned_grpcio_has_the_internals_the_pool_needs() -> None:
    check_grpc_internals()


def test_stalled_calls_take_no_thread_and_are_dropped_after_the_bound(small_server) -> None:
    attacker = StallingConnection("127.0.0.1", small_server.port)
    try:
        # Three times the threads there are, of every kind: unary native, unary v2, a stream.
        stalled = [attacker.open_stream(path) for path in (PREDICT, MODEL_INFER, STREAM) * 6]
        assert _wait_for(lambda: small_server_waiting(small_server) == len(stalled))
        with grpc.insecure_channel(f"127.0.0.1:{small_server.port}") as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            assert len(_predict(channel).probabilities) == 3
        assert _wait_for(lambda: len(attacker.closed_streams) == len(stalled))
        assert set(attacker.closed_streams.values()) == {DEADLINE_EXCEEDED}
    finally:
        attacker.close()


def small_server_waiting(server) -> int:
    return server.pool.waiting.count


def test_past_max_waiting_calls_the_oldest_waiting_call_is_dropped(test_models) -> None:
    settings = ServerSettings(workers=4, max_inflight=2, request_timeout_s=60, max_waiting_calls=4)
    metrics = ServerMetrics()
    server = start_server(settings, {"iris": test_models.classification}, metrics=metrics)
    attacker = StallingConnection("127.0.0.1", server.port)
    try:
        first = [attacker.open_stream(PREDICT) for _ in range(2)]
        assert _wait_for(lambda: small_server_waiting(server) == 2)
        later = [attacker.open_stream(PREDICT) for _ in range(4)]
        assert _wait_for(lambda: set(attacker.closed_streams) == set(first))
        assert set(attacker.closed_streams.values()) == {RESOURCE_EXHAUSTED}
        assert small_server_waiting(server) == len(later)
        sample = metrics.registry.get_sample_value
        assert sample("bnserve_calls_waiting_for_message") == len(later)
        assert sample("bnserve_calls_dropped_total", {"reason": "overflow"}) == len(first)
        assert sample("bnserve_calls_dropped_total", {"reason": "timeout"}) == 0
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            assert len(_predict(channel).probabilities) == 3
    finally:
        attacker.close()
        server.stop(0)


def test_a_stream_idle_past_its_bound_is_cancelled_and_its_thread_comes_back(test_models):
    settings = ServerSettings(
        workers=4, max_inflight=2, stream_workers=1, stream_idle_timeout_s=1.0
    )
    server = start_server(settings, {"iris": test_models.classification})
    attacker = StallingConnection("127.0.0.1", server.port)
    message = pb.PredictRequest(model_name="iris", features=[0.0] * NUM_FEATURES)
    try:
        stalled = attacker.open_stream(STREAM)  # one message, then silence: the one thread
        attacker.send_message(stalled, message.SerializeToString())
        assert _wait_for(lambda: stalled in attacker.closed_streams, timeout_s=20), (
            server.pool.idle_streams.count,
            server.pool.idle_streams.dropped,
            server.pool.waiting.count,
        )
        assert attacker.closed_streams[stalled] in (DEADLINE_EXCEEDED, None)  # status or reset
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            answers = list(stub.PredictStream(iter([message, message]), timeout=30))
            assert len(answers) == 2  # the stream thread is free again
    finally:
        attacker.close()
        server.stop(0)


def test_a_stream_stalled_after_its_first_message_takes_only_a_stream_thread(small_server):
    attacker = StallingConnection("127.0.0.1", small_server.port)
    message = pb.PredictRequest(model_name="iris", features=[0.0] * NUM_FEATURES)
    try:
        for _ in range(4):  # twice stream_workers, each holding its stream open after one message
            stream_id = attacker.open_stream(STREAM)
            attacker.send_message(stream_id, message.SerializeToString())
        with grpc.insecure_channel(f"127.0.0.1:{small_server.port}") as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            assert len(_predict(channel).probabilities) == 3
    finally:
        attacker.close()


def test_a_lying_length_prefix_is_refused_before_its_bytes_are_buffered(small_server):
    attacker = StallingConnection("127.0.0.1", small_server.port)
    limit = small_server.settings.max_message_bytes
    try:
        stream_id = attacker.open_stream(PREDICT)
        attacker.send_length_prefix(stream_id, 2_000_000_000)
        sent = 0
        chunk = b"\x01" * 65536
        while stream_id not in attacker.closed_streams and sent < 64 * limit:
            written = attacker.send_as_much_as_allowed(stream_id, chunk)
            sent += written
            if written == 0:
                _wait_for(lambda: stream_id in attacker.closed_streams, timeout_s=0.2)
        assert _wait_for(lambda: stream_id in attacker.closed_streams)
        assert attacker.closed_streams[stream_id] == RESOURCE_EXHAUSTED
        assert sent < 2 * limit  # flow control let through at most a window, not the message
    finally:
        attacker.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_stalled_calls_before_any_token_check_do_not_freeze_a_tls_server(
    pki: Pki, test_models: ModelFiles, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("stall-test-token-0123456789\n")
    server = ServerProcess(
        ["--model", str(test_models.classification), "--name", "iris",
         "--workers", "4", "--max-inflight", "2", "--request-timeout-s", "2",
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
         "--auth-token-file", str(tokens)]
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.set_alpn_protocols(["h2"])
    try:
        server.wait_ready()
        attacker = StallingConnection("127.0.0.1", server.port, tls_context=context)
        stalled = [attacker.open_stream(PREDICT) for _ in range(12)]  # no token, no message
        credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes())
        with grpc.secure_channel(server.target, credentials) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            answer = _predict(
                channel, metadata=[("authorization", "Bearer stall-test-token-0123456789")]
            )
            assert len(answer.probabilities) == 3
        assert _wait_for(lambda: len(attacker.closed_streams) == len(stalled))
        assert set(attacker.closed_streams.values()) == {DEADLINE_EXCEEDED}
        attacker.close()
    finally:
        assert server.stop() == 0
