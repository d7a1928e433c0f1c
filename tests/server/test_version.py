"""The version a server reports (native ModelInfo, v2 ServerMetadata over gRPC and REST) is the
installed distribution's, as `bnserve --version` prints it."""

from __future__ import annotations

import json
import urllib.request
from importlib import metadata

import grpc

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.settings import ServerSettings
from bnserve.server.version import installed_version
from tests.support.in_process import start_server
from tests.support.model_builder import ModelFiles


def test_the_installed_version_is_pip_s() -> None:
    assert installed_version() == metadata.version("bnserve") != "unknown"


def test_model_info_and_server_metadata_carry_it(test_models: ModelFiles) -> None:
    server = start_server(
        ServerSettings(workers=4, max_inflight=2), {"iris": test_models.classification}, http=True
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = predictor_pb2_grpc.PredictorStub(channel).ModelInfo(
                pb.ModelInfoRequest(model_name="iris"), timeout=10
            )
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            server_metadata = inference.ServerMetadata(v2.ServerMetadataRequest(), timeout=10)
        url = f"http://127.0.0.1:{server.http_port}/v2"
        with urllib.request.urlopen(url, timeout=10) as response:
            rest = json.load(response)
    finally:
        server.stop(0)
    version = metadata.version("bnserve")
    assert info.server_version == server_metadata.version == rest["version"] == version
