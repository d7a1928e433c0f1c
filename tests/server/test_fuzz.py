"""Bad bytes: random and mutated request messages to the RPCs of VALID_REQUESTS (every native one,
the v2 ones but streaming, model config, statistics and repository; health Check) of a real server
process; every call is answered with a status a client can act on, and the server stays alive
and correct.

The normal suite sends 150 per RPC (300 to Feedback and ModelQuality, the newest); `-m slow`
sends 10,000 per RPC, these two included.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward
from tests.support.server_process import ServerProcess

SHORT_EXAMPLES = 150
NEWEST = {"/bnserve.v1.Predictor/Feedback", "/bnserve.v1.Predictor/ModelQuality"}
NEWEST_SHORT_EXAMPLES = 300  # the quick variant's share of the RPCs with the least mileage
SLOW_EXAMPLES = 10_000
FEATURES = np.linspace(-2, 2, NUM_FEATURES, dtype=np.float32)
# Statuses that mean "not answered" or "the server broke": never acceptable for any input.
BROKEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
}

_infer_input = v2.ModelInferRequest.InferInputTensor(
    name="x", datatype="FP32", shape=[1, NUM_FEATURES],
    contents=v2.InferTensorContents(fp32_contents=FEATURES),
)  # fmt: skip
# A valid request per method: hypothesis mutates its bytes (and also sends random bytes).
VALID_REQUESTS = {
    "/bnserve.v1.Predictor/Predict": pb.PredictRequest(model_name="iris", features=FEATURES),
    "/bnserve.v1.Predictor/PredictBatch": pb.PredictBatchRequest(
        features=np.tile(FEATURES, 3), raw_features=b""
    ),
    "/bnserve.v1.Predictor/PredictStream": pb.PredictRequest(
        named_features={f"f{i}": float(v) for i, v in enumerate(FEATURES)}, id="a"
    ),
    "/bnserve.v1.Predictor/ModelInfo": pb.ModelInfoRequest(model_name="iris", model_version="1"),
    "/bnserve.v1.Predictor/ModelDrift": pb.ModelDriftRequest(model_name="iris"),
    "/bnserve.v1.Predictor/Feedback": pb.FeedbackRequest(
        model_name="iris",
        answers=[pb.TrueAnswer(id="a", row=1, label=CLASS_NAMES[1])],
    ),
    "/bnserve.v1.Predictor/ModelQuality": pb.ModelQualityRequest(model_name="iris"),
    "/inference.GRPCInferenceService/ServerLive": v2.ServerLiveRequest(),
    "/inference.GRPCInferenceService/ServerReady": v2.ServerReadyRequest(),
    "/inference.GRPCInferenceService/ModelReady": v2.ModelReadyRequest(name="iris", version="1"),
    "/inference.GRPCInferenceService/ServerMetadata": v2.ServerMetadataRequest(),
    "/inference.GRPCInferenceService/ModelMetadata": v2.ModelMetadataRequest(name="iris"),
    "/inference.GRPCInferenceService/ModelInfer": v2.ModelInferRequest(
        model_name="iris",
        inputs=[_infer_input],
        raw_input_contents=[],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="label")],
    ),
    "/grpc.health.v1.Health/Check": health_pb2.HealthCheckRequest(service=""),
}
STREAMING = {"/bnserve.v1.Predictor/PredictStream"}


@pytest.fixture(scope="module")
def fuzz_server(
    test_models: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    capture = tmp_path_factory.mktemp("fuzz") / "capture"  # Feedback and ModelQuality do work
    server = ServerProcess(
        ["--model", str(test_models.classification), "--capture-dir", str(capture)]
    )
    server.wait_ready()
    yield server
    assert server.stop() == 0


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """valid with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and data:
            del data[position]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


def _message_bytes(method: str) -> st.SearchStrategy[bytes]:
    valid = VALID_REQUESTS[method].SerializeToString()
    return st.one_of(st.binary(max_size=300), mutated(valid), st.just(valid))


def _call(channel: grpc.Channel, method: str, messages: list[bytes]) -> grpc.StatusCode:
    try:
        if method in STREAMING:
            call = channel.stream_stream(method)
            list(call(iter(messages), timeout=10))
        else:
            channel.unary_unary(method)(messages[0], timeout=10)
    except grpc.RpcError as error:
        assert error.code() not in BROKEN, f"{method}: {error.code()} {error.details()}"
        assert error.details(), f"{method}: {error.code()} without a message"
        return error.code()
    return grpc.StatusCode.OK


def _fuzz(server: ServerProcess, method: str, examples: int) -> None:
    seen: set[grpc.StatusCode] = set()
    with grpc.insecure_channel(server.target) as channel:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(messages=st.lists(_message_bytes(method), min_size=1, max_size=3))
        def fuzz_one(messages: list[bytes]) -> None:
            seen.add(_call(channel, method, messages))

        fuzz_one()
    assert grpc.StatusCode.OK in seen  # the valid request was among them and answered
    assert server.process.poll() is None


@pytest.mark.parametrize("method", sorted(VALID_REQUESTS))
def test_fuzz_short(fuzz_server: ServerProcess, method: str, test_models: ModelFiles) -> None:
    _fuzz(fuzz_server, method, NEWEST_SHORT_EXAMPLES if method in NEWEST else SHORT_EXAMPLES)
    _check_answer(fuzz_server, test_models)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(VALID_REQUESTS))
def test_fuzz_10k_per_rpc(fuzz_server: ServerProcess, method: str, test_models: ModelFiles):
    _fuzz(fuzz_server, method, SLOW_EXAMPLES)
    _check_answer(fuzz_server, test_models)


def _check_answer(server: ServerProcess, test_models: ModelFiles) -> None:
    expected = numpy_forward(test_models.classification_weights, FEATURES[None], "classification")
    with grpc.insecure_channel(server.target) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        answer = stub.Predict(pb.PredictRequest(features=FEATURES), timeout=10)
    np.testing.assert_allclose(answer.probabilities, expected["probabilities"][0], atol=1e-5)
