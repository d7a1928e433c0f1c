"""One call observer (server/observability/calls.py) for both transports: the same call over
gRPC and over HTTP/REST leaves the same access-log fields and the same trace spans."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from bnserve.server.app import Server
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.observability.calls import CallObserver
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from bnserve.server.observability.tracing import Tracing  # noqa: E402

ROW = np.linspace(-1, 1, NUM_FEATURES, dtype=np.float32)
GRPC_INFER = "inference.GRPCInferenceService/ModelInfer"
HTTP_INFER = "HTTP /v2/models/{name}/infer"
PARTS = {"validate", "queue", "run", "encode"}


@pytest.fixture(params=[False, True], ids=["unbatched", "batched"])
def observed(
    request: pytest.FixtureRequest, test_models: ModelFiles
) -> Iterator[tuple[Server, InMemorySpanExporter]]:
    """A server with both transports, every call logged and traced; batched: HTTP scores on
    its thread pool (the span must follow the call there)."""
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    server = start_server(
        ServerSettings(workers=4, max_inflight=2, batching=request.param),
        {"iris": test_models.classification},
        http=True,
        observer=CallObserver(None, access_log_sample=1.0, tracing=tracing),
    )
    yield server, exporter
    server.stop(0)
    tracing.shutdown()


def _infer_over_grpc(server: Server, request_id: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, NUM_FEATURES]
        )
        tensor.contents.fp32_contents.extend(ROW.tolist())
        stub.ModelInfer(pb.ModelInferRequest(model_name="iris", id=request_id, inputs=[tensor]))


def _infer_over_http(server: Server, request_id: str) -> None:
    body = {
        "id": request_id,
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, NUM_FEATURES], "data": ROW.tolist()}
        ],
    }
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", "/v2/models/iris/infer", json.dumps(body))
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_the_same_call_leaves_the_same_traces_on_both_transports(
    observed: tuple[Server, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    server, exporter = observed
    with caplog.at_level(logging.INFO, logger="server.access"):
        _infer_over_grpc(server, "over-grpc")
        _infer_over_http(server, "over-http")
    lines = {
        record.fields["id"]: record.fields for record in caplog.records if hasattr(record, "fields")
    }
    over_grpc, over_http = lines["over-grpc"], lines["over-http"]
    assert over_grpc.keys() == over_http.keys()
    assert (over_grpc["method"], over_http["method"]) == (GRPC_INFER, HTTP_INFER)
    for fields in (over_grpc, over_http):
        assert (fields["model"], fields["version"], fields["code"]) == ("iris", "1", "OK")
        assert fields["ms"] > 0 and fields["peer"].startswith("ipv4:127.0.0.1:")

    spans = exporter.get_finished_spans()
    for method in (GRPC_INFER, HTTP_INFER):
        (call,) = [span for span in spans if span.name == method]
        assert call.attributes["rpc.grpc.status_code"] == "OK"
        assert call.attributes["bnserve.model"] == "iris"
        parts = [s.name for s in spans if s.parent and s.parent.span_id == call.context.span_id]
        assert sorted(parts) == sorted(PARTS), method


def test_an_http_call_joins_the_callers_trace_and_a_refusal_is_an_error(
    observed: tuple[Server, InMemorySpanExporter],
) -> None:
    server, exporter = observed
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(
            "POST",
            "/v2/models/tulip/infer",
            b"{}",
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        assert connection.getresponse().status == 404
    finally:
        connection.close()
    (call,) = [span for span in exporter.get_finished_spans() if span.name == HTTP_INFER]
    assert format(call.context.trace_id, "032x") == trace_id
    assert format(call.parent.span_id, "016x") == parent_id
    assert call.attributes["rpc.grpc.status_code"] == "NOT_FOUND"
    assert call.attributes["http.response.status_code"] == 404
    assert not call.status.is_ok
