"""OpenTelemetry tracing (server/observability/tracing.py): a call with a W3C traceparent becomes
a SERVER span in that trace, with validate/queue/run/encode children timed by the data plane."""

from __future__ import annotations

import itertools

import grpc
import numpy as np
import pytest

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
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

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture()
def traced(test_models: ModelFiles):
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    server = start_server(
        ServerSettings(workers=4, max_inflight=2),
        {"iris": test_models.classification},
        observer=CallObserver(None, tracing=tracing),
    )
    yield server, exporter
    server.stop(0)
    tracing.shutdown()


def test_a_call_joins_the_callers_trace_with_its_parts(traced) -> None:
    server, exporter = traced
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        request = pb.PredictRequest(model_name="iris", features=np.zeros(NUM_FEATURES).tolist())
        stub.Predict(request, metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")])
        with pytest.raises(grpc.RpcError):
            stub.Predict(pb.PredictRequest(model_name="iris", features=[1.0]))
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "bnserve.v1.Predictor/Predict"]
    assert len(calls) == 2
    joined, refused = calls
    assert format(joined.context.trace_id, "032x") == TRACE_ID
    assert format(joined.parent.span_id, "016x") == PARENT_ID
    assert joined.attributes["rpc.grpc.status_code"] == "OK"
    assert joined.attributes["bnserve.model"] == "iris"
    parts = {s.name: s for s in spans if s.parent and s.parent.span_id == joined.context.span_id}
    assert set(parts) == {"validate", "queue", "run", "encode"}
    ordered = [parts[name] for name in ("validate", "queue", "run", "encode")]
    for earlier, later in itertools.pairwise(ordered):
        assert earlier.end_time <= later.start_time
    assert joined.start_time <= ordered[0].start_time and ordered[-1].end_time <= joined.end_time
    # A call without traceparent starts a trace of its own; a refused one is marked an error.
    assert refused.parent is None and refused.context.trace_id != joined.context.trace_id
    assert refused.attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"
    assert not refused.status.is_ok


def test_otlp_endpoint_without_the_tracing_extra_is_one_clear_line(test_models) -> None:
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("opentelemetry.exporter.otlp") is not None:
        pytest.skip("the tracing extra is installed here")
    served = subprocess.run(
        [sys.executable, "-m", "bnserve.server", "--model", str(test_models.classification),
         "--port", "0", "--metrics-port", "0", "--http-port", "0",
         "--otlp-endpoint", "http://127.0.0.1:4317"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert served.returncode == 2
    assert served.stderr.strip().splitlines()[-1] == (
        "bnserve serve: error: --otlp-endpoint needs OpenTelemetry: pip install 'bnserve[tracing]'"
    )
