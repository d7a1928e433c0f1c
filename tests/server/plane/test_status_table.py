"""The one status table (server/plane/errors.py): every domain error answers the same meaning over
gRPC and HTTP, and the metrics count the HTTP answer under the table's gRPC code.

Both transports run for real on loopback around one data plane whose model lookup raises the
error named by the model name asked for."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import grpc
import pytest

import bnserve.server.app  # noqa: F401  (imports every module that may define a ServingError)
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.grpc.transport import GrpcOptions, GrpcTransport
from bnserve.server.models.repository import ModelRepository
from bnserve.server.models.servable import Servable
from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.admission import InflightLimiter
from bnserve.server.plane.dataplane import DataPlane
from bnserve.server.plane.errors import STATUS_BY_ERROR, ServingError, status_for
from bnserve.server.rest.server import RestOptions, RestTransport
from bnserve.server.settings import ServerSettings


def _every_subclass(base: type[ServingError]) -> list[type[ServingError]]:
    found = []
    for subclass in base.__subclasses__():
        found += [subclass, *_every_subclass(subclass)]
    return found


ERRORS = {error_type.__name__: error_type for error_type in _every_subclass(ServingError)}


class _RaisingPlane(DataPlane):
    """A data plane whose lookup of model NAME raises the ServingError subclass called NAME."""

    def find(self, name: str, version: str = "") -> Servable:
        raise ERRORS[name](f"raised {name} on purpose")


@pytest.fixture(scope="module")
def transports() -> Iterator[tuple[GrpcTransport, RestTransport, ServerMetrics]]:
    metrics = ServerMetrics()
    observer = CallObserver(metrics)
    plane = _RaisingPlane(ModelRepository(), InflightLimiter(2))
    settings = ServerSettings(host="127.0.0.1", port=0, http_port=0, workers=4, max_inflight=2)
    grpc_transport = GrpcTransport(settings, plane, GrpcOptions(observer=observer))
    rest_transport = RestTransport(settings, plane, RestOptions(observer=observer))
    for transport in (grpc_transport, rest_transport):
        transport.bind()
        transport.start()
    yield grpc_transport, rest_transport, metrics
    rest_transport.stop(0)
    grpc_transport.stop(0)


def test_every_domain_error_has_a_row() -> None:
    assert len(ERRORS) >= 7, sorted(ERRORS)
    unlisted = [
        name for name, error in ERRORS.items() if not set(error.__mro__) & STATUS_BY_ERROR.keys()
    ]
    assert not unlisted, f"add these to STATUS_BY_ERROR: {unlisted}"


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_both_transports_answer_what_the_table_says(transports, name: str) -> None:
    grpc_transport, rest_transport, metrics = transports
    expected = status_for(ERRORS[name]("x"))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_transport.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=30)
    assert (raised.value.code(), raised.value.details()) == (
        expected.grpc,
        f"raised {name} on purpose",
    )
    connection = http.client.HTTPConnection("127.0.0.1", rest_transport.port, timeout=30)
    try:
        connection.request("GET", f"/v2/models/{name}")
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert (response.status, answer) == (expected.http, {"error": f"raised {name} on purpose"})
    counted = metrics.registry.get_sample_value(
        "bnserve_requests_total",
        {"method": "HTTP /v2/models/{name}", "model": "", "code": expected.grpc.name},
    )
    assert counted is not None and counted >= 1


def test_the_two_fixed_inconsistencies() -> None:
    """Model control closed is UNIMPLEMENTED/501 on both (not 403); a model that cannot be
    loaded is FAILED_PRECONDITION/400 on both (not counted UNAVAILABLE from HTTP)."""
    assert STATUS_BY_ERROR[ERRORS["ModelControlClosed"]] == (grpc.StatusCode.UNIMPLEMENTED, 501)
    assert STATUS_BY_ERROR[ERRORS["ModelLoadError"]] == (grpc.StatusCode.FAILED_PRECONDITION, 400)
