"""Real servers on free loopback ports, serving the test models of model_builder.py."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import CLASS_NAMES, MlpWeights, ModelFiles, build_model


@pytest.fixture(scope="session")
def test_models(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    directory = tmp_path_factory.mktemp("models")
    classifier, classifier_weights = build_model("classification", seed=1)
    regressor, regressor_weights = build_model("regression", seed=2)
    other_weights = MlpWeights.random(len(CLASS_NAMES), seed=99)
    bad, _ = build_model("classification", seed=3, reference_weights=other_weights)
    paths = {}
    for name, model in [("iris", classifier), ("sales", regressor), ("bad_parity", bad)]:
        paths[name] = directory / f"{name}.onnx"
        paths[name].write_bytes(model.SerializeToString())
    return ModelFiles(
        paths["iris"], paths["sales"], paths["bad_parity"], classifier_weights, regressor_weights
    )


@pytest.fixture(scope="session")
def server(test_models: ModelFiles) -> Iterator[Server]:
    """Serves iris (classification) and sales (regression), no batching."""
    started = start_server(
        ServerSettings(workers=8, max_inflight=6),
        {"iris": test_models.classification, "sales": test_models.regression},
    )
    yield started
    started.stop(0)


@pytest.fixture(scope="session")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture(scope="session")
def predictor(channel: grpc.Channel) -> predictor_pb2_grpc.PredictorStub:
    return predictor_pb2_grpc.PredictorStub(channel)


@pytest.fixture(scope="session")
def inference(channel: grpc.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
