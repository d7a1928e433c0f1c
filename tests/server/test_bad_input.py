"""Every bad input gets the right status and a message a person can act on; serving goes on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles

GOOD = [0.5] * NUM_FEATURES
NAMED_EXTRA = {**{f"f{i}": 1.0 for i in range(NUM_FEATURES)}, "petal": 2.0}
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value


NATIVE_CASES = [
    ("too few features", pb.PredictRequest(model_name="iris", features=[1, 2]), INVALID,
     ["takes 6 features", "got 2", "'f0'"]),
    ("too many features", pb.PredictRequest(model_name="iris", features=[1] * 9), INVALID,
     ["takes 6 features", "got 9"]),
    ("unknown names", pb.PredictRequest(model_name="iris", named_features=NAMED_EXTRA), INVALID,
     ["unknown feature names ['petal']"]),
    ("missing names", pb.PredictRequest(model_name="iris", named_features={"f0": 1.0}), INVALID,
     ["missing features ['f1'"]),
    ("NaN", pb.PredictRequest(model_name="iris", features=[1, 2, float("nan"), 4, 5, 6]), INVALID,
     ["feature 2 ('f2') is nan", "finite"]),
    ("Inf", pb.PredictRequest(model_name="iris", features=[1, 2, 3, 4, float("-inf"), 6]), INVALID,
     ["feature 4 ('f4') is -inf"]),
    ("empty", pb.PredictRequest(model_name="iris"), INVALID, ["empty request", "6 values"]),
    ("both forms", pb.PredictRequest(model_name="iris", features=GOOD, named_features={"f0": 1}),
     INVALID, ["either features", "not both"]),
    ("unknown model", pb.PredictRequest(model_name="tulip", features=GOOD), NOT_FOUND,
     ["no model named 'tulip'", "iris", "sales"]),
    ("unknown version", pb.PredictRequest(model_name="iris", model_version="7", features=GOOD),
     NOT_FOUND, ["has no version '7'", "it has: 1"]),
    ("no model name with two models", pb.PredictRequest(features=GOOD), NOT_FOUND,
     ["set model_name", "iris, sales"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_message", "code", "phrases"),
    [case[1:] for case in NATIVE_CASES],
    ids=[case[0] for case in NATIVE_CASES],
)
def test_native_predict_rejects(predictor, request_message, code, phrases) -> None:
    error = _error(predictor.Predict, request_message)
    assert error.code() == code, error.details()
    for phrase in phrases:
        assert phrase in error.details()
    assert predictor.Predict(pb.PredictRequest(model_name="iris", features=GOOD)).class_name


BATCH_CASES = [
    ("not whole examples", pb.PredictBatchRequest(model_name="iris", features=[1.0] * 7),
     ["7 feature values", "6 features each"]),
    ("ragged raw bytes", pb.PredictBatchRequest(model_name="iris", raw_features=b"\0" * 10),
     ["10 bytes", "4 bytes each"]),
    ("empty", pb.PredictBatchRequest(model_name="iris"), ["empty request"]),
    ("NaN in row 1", pb.PredictBatchRequest(model_name="iris", features=[*GOOD, np.nan, *GOOD[1:]]),
     ["example 1, feature 0 ('f0') is nan"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_message", "phrases"),
    [case[1:] for case in BATCH_CASES],
    ids=[case[0] for case in BATCH_CASES],
)
def test_native_predict_batch_rejects(predictor, request_message, phrases) -> None:
    error = _error(predictor.PredictBatch, request_message)
    assert error.code() == INVALID
    for phrase in phrases:
        assert phrase in error.details()


def test_stream_error_names_the_message(predictor) -> None:
    requests = [
        pb.PredictRequest(model_name="iris", features=GOOD, id="a"),
        pb.PredictRequest(model_name="iris", features=[1.0], id="b"),
    ]
    stream = predictor.PredictStream(iter(requests))
    assert next(stream).id == "a"
    with pytest.raises(grpc.RpcError) as raised:
        next(stream)
    assert raised.value.code() == INVALID
    assert "stream message 1 (id 'b')" in raised.value.details()


def _v2_request(datatype="FP32", shape=(1, NUM_FEATURES), name="x", values=GOOD, model="iris"):
    request = v2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    tensor.contents.fp32_contents.extend(values)
    return request


def _v2_raw(raw: bytes, shape=(1, NUM_FEATURES)) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name="iris", raw_input_contents=[raw])
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    return request


def _v2_raw_and_typed() -> v2.ModelInferRequest:
    request = _v2_raw(np.array([GOOD], np.float32).tobytes())
    request.inputs[0].contents.fp32_contents.extend(GOOD)
    return request


def _v2_unknown_output() -> v2.ModelInferRequest:
    request = _v2_request()
    request.outputs.add(name="logits")
    return request


V2_CASES = [
    ("wrong datatype", _v2_request(datatype="INT64"), INVALID, ["datatype 'INT64'", "FP32 [N, 6]"]),
    ("wrong rank", _v2_request(shape=(6,)), INVALID, ["shape [6]", "[N, 6]"]),
    ("wrong width", _v2_request(shape=(1, 5), values=GOOD[:5]), INVALID, ["shape [1, 5]"]),
    ("contents disagree with shape", _v2_request(shape=(2, NUM_FEATURES)), INVALID,
     ["6 fp32_contents", "needs 12 values"]),
    ("raw size wrong", _v2_raw(b"\0" * 20), INVALID, ["20 bytes", "needs 24"]),
    ("raw and typed contents", _v2_raw_and_typed(), INVALID, ["raw_input_contents", "not both"]),
    ("two raw entries for one input", v2.ModelInferRequest(
        model_name="iris", raw_input_contents=[b"", b""], inputs=[{"name": "x", "datatype": "FP32",
        "shape": [1, NUM_FEATURES]}]), INVALID, ["exactly one entry"]),
    ("NaN raw", _v2_raw(np.array([[np.nan, *GOOD[1:]]], np.float32).tobytes()), INVALID,
     ["('f0') is nan"]),
    ("unknown input", _v2_request(name="features"), INVALID, ["unknown input 'features'"]),
    ("no inputs", v2.ModelInferRequest(model_name="iris"), INVALID, ["no inputs (empty request)"]),
    ("empty contents", _v2_request(values=[]), INVALID, ["no fp32_contents (empty request)"]),
    ("unknown output", _v2_unknown_output(), INVALID, ["unknown output(s) ['logits']"]),
    ("unknown model", _v2_request(model="tulip"), NOT_FOUND, ["no model named 'tulip'"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_message", "code", "phrases"),
    [case[1:] for case in V2_CASES],
    ids=[case[0] for case in V2_CASES],
)
def test_v2_model_infer_rejects(inference, predictor, request_message, code, phrases) -> None:
    error = _error(inference.ModelInfer, request_message)
    assert error.code() == code, error.details()
    for phrase in phrases:
        assert phrase in error.details(), error.details()
    assert inference.ModelInfer(_v2_request()).outputs


def test_message_over_size_limit_is_resource_exhausted(test_models: ModelFiles) -> None:
    server = start_server(
        ServerSettings(max_message_bytes=4096), {"iris": test_models.classification}
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            big = pb.PredictBatchRequest(model_name="iris", features=[0.5] * 6 * 200)
            error = _error(stub.PredictBatch, big)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "4096" in error.details()
            small = pb.PredictBatchRequest(model_name="iris", features=[0.5] * 6 * 10)
            assert stub.PredictBatch(small).num_examples == 10
    finally:
        server.stop(0)
