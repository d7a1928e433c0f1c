"""server/_compat.py: each private assumption broken on purpose, and what the server does then —
refuses to start (another grpcio, a missing name), starts without stall protection only when
told to (logged, metric 0), or takes the stock path for a call of another shape (counted,
logged once)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.request

import grpc
import pytest

from bnserve.server import _compat as compat
from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles
from tests.support.server_process import free_port

# `python -m server` with grpc.__version__ replaced first, as another grpcio would report it.
OTHER_GRPCIO = (
    "import sys, grpc; grpc.__version__ = '1.99.0'; from bnserve.server.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def _predict(port: int) -> pb.PredictResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        return stub.Predict(pb.PredictRequest(features=[0.5] * NUM_FEATURES), timeout=10)


def test_another_grpcio_is_refused_with_one_line(test_models: ModelFiles) -> None:
    result = subprocess.run(
        [sys.executable, "-c", OTHER_GRPCIO, "--model", str(test_models.classification),
         "--port", "0", "--http-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("bnserve serve: error: grpcio 1.99.0 is"), (
        result.stderr
    )
    assert "--allow-unpinned-grpcio" in errors[0]
    assert "Traceback" not in result.stderr


def test_another_grpcio_runs_unprotected_only_when_allowed(test_models: ModelFiles) -> None:
    metrics_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", OTHER_GRPCIO, "--model", str(test_models.classification),
         "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
         "--metrics-port", str(metrics_port)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "BNSERVE_ALLOW_UNPINNED_GRPCIO": "1"},
    )  # fmt: skip
    try:
        lines = []
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving on port" in line:
                break
        port = int(lines[-1].split("serving on port ")[1].split(",")[0])
        assert any("WITHOUT the protection against stalled calls" in line for line in lines)
        assert len(_predict(port).probabilities) == 3
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        assert "bnserve_grpc_stall_protection 0.0" in metrics
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()


def test_a_missing_internal_name_is_refused(monkeypatch, test_models: ModelFiles) -> None:
    monkeypatch.delattr(compat.grpc_server, "_abort")
    with pytest.raises(compat.UnpinnedGrpcio, match=r"lacks grpc\._server\._abort"):
        Server.create(ServerSettings(port=0, http_port=0), sources=[])
    allowed = Server.create(
        ServerSettings(port=0, http_port=0, allow_unpinned_grpcio=True), sources=[]
    )
    assert allowed.pool is None  # grpcio's own pool
    allowed.stop(0)


def test_a_call_of_another_shape_takes_the_stock_path_counted_and_logged_once(
    monkeypatch, caplog, test_models: ModelFiles
) -> None:
    # As if grpc renamed the function it submits: no call has the checked shape any more.
    monkeypatch.setattr(compat, "_RUNNERS", ())
    server = start_server(
        ServerSettings(workers=4, max_inflight=2), {"iris": test_models.classification}
    )
    try:
        with caplog.at_level(logging.WARNING, logger=compat.__name__):
            for _ in range(3):
                assert len(_predict(server.port).probabilities) == 3
        assert server.pool is not None and server.pool.stock_path.count >= 3
        warnings = [r for r in caplog.records if "took grpcio's stock path" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        server.stop(0)


def test_onnxruntime_without_the_binding_scores_through_run_logged_once(caplog) -> None:
    class Session:
        def run(self, outputs, feed, options=None):
            return ["public"]

    monkeypatch_flag = compat._onnxruntime_fallback_logged
    monkeypatch_flag.clear()
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        first = compat.session_run(Session())
        compat.session_run(Session())
    assert first(["y"], {}, None) == ["public"]
    assert sum("has no _sess.run" in r.getMessage() for r in caplog.records) == 1
