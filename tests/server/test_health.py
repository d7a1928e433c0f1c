"""Health (overall and per service), readiness vs liveness, the parity gate, reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.grpc.transport import LIVENESS
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles

SERVICES = ["", "bnserve.v1.Predictor", "inference.GRPCInferenceService"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(channel: grpc.Channel) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(channel)
    return {
        name: stub.Check(health_pb2.HealthCheckRequest(service=name)).status for name in SERVICES
    }


def test_health_serving_when_models_ready(channel) -> None:
    assert _health(channel) == dict.fromkeys(SERVICES, SERVING)


def test_parity_gate_failure_never_reports_serving(test_models: ModelFiles) -> None:
    server = start_server(ServerSettings(), {"bad": test_models.bad_parity})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert _health(channel) == dict.fromkeys(SERVICES, NOT_SERVING)
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert inference.ServerLive(v2.ServerLiveRequest()).live
            assert not inference.ServerReady(v2.ServerReadyRequest()).ready
            assert not inference.ModelReady(v2.ModelReadyRequest(name="bad")).ready
            predictor = predictor_pb2_grpc.PredictorStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                predictor.Predict(
                    pb.PredictRequest(model_name="bad", features=[0.0] * NUM_FEATURES)
                )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "parity gate failed" in raised.value.details()
            assert "reference rows" in raised.value.details()
    finally:
        server.stop(0)


def test_one_failed_model_keeps_server_unready_while_others_serve(test_models: ModelFiles) -> None:
    server = start_server(
        ServerSettings(), {"iris": test_models.classification, "bad": test_models.bad_parity}
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert _health(channel)[""] == NOT_SERVING
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert not inference.ServerReady(v2.ServerReadyRequest()).ready
            assert inference.ModelReady(v2.ModelReadyRequest(name="iris")).ready
            predictor = predictor_pb2_grpc.PredictorStub(channel)
            request = pb.PredictRequest(model_name="iris", features=[0.0] * NUM_FEATURES)
            assert predictor.Predict(request).class_name
    finally:
        server.stop(0)


def _liveness(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS)).status


def test_liveness_is_serving_whether_or_not_the_model_is(channel, test_models: ModelFiles) -> None:
    assert _liveness(channel) == SERVING
    server = start_server(ServerSettings(), {"bad": test_models.bad_parity})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as unready:
            assert _health(unready)[""] == NOT_SERVING
            assert _liveness(unready) == SERVING
        server.stop(0)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as stopped:
            with pytest.raises(grpc.RpcError) as raised:
                _liveness(stopped)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_no_model_is_live_but_not_ready() -> None:
    server = start_server(ServerSettings())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert _health(channel) == dict.fromkeys(SERVICES, NOT_SERVING)
            assert _liveness(channel) == SERVING
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert inference.ServerLive(v2.ServerLiveRequest()).live
            assert not inference.ServerReady(v2.ServerReadyRequest()).ready
    finally:
        server.stop(0)


def test_reflection_lists_every_service(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in response.list_services_response.service}
    assert {
        "bnserve.v1.Predictor",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    by_symbol = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="bnserve.v1.Predictor"
    )
    files = next(stub.ServerReflectionInfo(iter([by_symbol]))).file_descriptor_response
    assert files.file_descriptor_proto  # grpcurl can describe and call it


def test_reflection_v1_answers_as_v1alpha_does(channel) -> None:
    """grpc.reflection.v1 (current grpcurl asks it first): the same answers, same bytes."""
    v1_info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    listing = next(v1_info(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {service.name for service in listing.list_services_response.service}
    assert {
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService",
    } <= names
    by_symbol = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService"
    )
    v1_files = next(v1_info(iter([by_symbol]))).file_descriptor_response.file_descriptor_proto
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    v1alpha_files = next(stub.ServerReflectionInfo(iter([by_symbol])))
    assert v1_files and list(v1_files) == list(
        v1alpha_files.file_descriptor_response.file_descriptor_proto
    )


def test_unknown_method_is_unimplemented_naming_what_is_served(channel) -> None:
    for method in (
        "/inference.GRPCInferenceService/SystemSharedMemoryStatus",
        "/no.such.Service/Call",
    ):
        call = channel.unary_unary(method)
        with pytest.raises(grpc.RpcError) as raised:
            call(b"")
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        details = raised.value.details()
        assert method in details
        assert "inference.GRPCInferenceService" in details and "bnserve.v1.Predictor" in details
