"""The Prometheus endpoint of a real server process: calls by method and status code, latency,
batch sizes, versions loaded, reload failures."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from tests.support.model_builder import NUM_FEATURES
from tests.support.server_process import (
    ServerProcess,
    corrupt_bytes,
    free_port,
    install_version,
    model_bytes,
)

PREDICT = "bnserve.v1.Predictor/Predict"
BATCH = "bnserve.v1.Predictor/PredictBatch"
STREAM = "bnserve.v1.Predictor/PredictStream"


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_calls_codes_batches_versions_and_refusals(tmp_path: Path) -> None:
    model_dir = tmp_path / "iris"
    install_version(model_dir, 1, model_bytes(seed=1)[0])
    metrics_port = free_port()
    server = ServerProcess(
        ["--model", str(model_dir), "--metrics-port", str(metrics_port),
         "--reload-interval-s", "0.05"]
    )  # fmt: skip
    examples = np.random.default_rng(3).normal(size=(20, NUM_FEATURES)).astype(np.float32)
    try:
        server.wait_ready()
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in server.log()
        with grpc.insecure_channel(server.target) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            for row in examples[:7]:
                stub.Predict(pb.PredictRequest(features=row))
            for bad in ([1.0], [float("nan")] * NUM_FEATURES):
                with pytest.raises(grpc.RpcError) as error:
                    stub.Predict(pb.PredictRequest(features=bad))
                assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError):
                stub.Predict(pb.PredictRequest(model_name="tulip", features=examples[0]))
            stub.PredictBatch(pb.PredictBatchRequest(features=examples.ravel()))
            stream = [pb.PredictRequest(features=row) for row in examples[:3]]
            assert len(list(stub.PredictStream(iter(stream)))) == 3
            with pytest.raises(grpc.RpcError) as unimplemented:
                channel.unary_unary("/bnserve.v1.Predictor/Explain")(b"")
            assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
        install_version(model_dir, 2, corrupt_bytes(model_bytes(seed=2)[0]))
        server.wait_for("version 2 refused")
        samples = _scrape(metrics_port)
    finally:
        assert server.stop() == 0

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    # The model label: the served model's name, "" where a call named none that was served.
    assert value("bnserve_requests_total", method=PREDICT, model="iris", code="OK") == 7
    assert value("bnserve_requests_total", method=PREDICT, model="", code="INVALID_ARGUMENT") == 2
    assert value("bnserve_requests_total", method=PREDICT, model="", code="NOT_FOUND") == 1
    assert value("bnserve_requests_total", method=BATCH, model="iris", code="OK") == 1
    assert value("bnserve_requests_total", method=STREAM, model="", code="OK") == 1  # one call
    assert value("bnserve_request_duration_seconds_count", method=PREDICT, model="iris") == 7
    assert value("bnserve_request_duration_seconds_count", method=PREDICT, model="") == 3
    assert (
        value("bnserve_request_duration_seconds_bucket", method=PREDICT, model="", le="+Inf") == 3
    )
    assert 0 < value("bnserve_request_duration_seconds_sum", method=PREDICT, model="iris") < 10
    assert value("bnserve_unimplemented_calls_total") == 1
    assert value("process_resident_memory_bytes") > 0 and value("process_open_fds") > 0
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert ("bnserve_model_version_loaded", (("model", "iris"), ("version", "1"))) in samples
    # Only the scored calls ran the model: 7 single examples, one batch of 20, and the stream's 3
    # examples in 1 to 3 runs (a stream scores the messages that have already arrived together).
    runs = value("bnserve_batch_size_count", model="iris")
    assert 7 + 1 + 1 <= runs <= 7 + 1 + 3
    assert value("bnserve_batch_size_sum", model="iris") == 7 + 20 + 3
    assert 7 <= value("bnserve_batch_size_bucket", model="iris", le="1.0") <= runs - 1
    assert value("bnserve_model_version_loaded", model="iris", version="1") == 1
    assert ("bnserve_model_version_loaded", (("model", "iris"), ("version", "2"))) not in samples
    assert value("bnserve_model_loads_total", model="iris") == 1
    assert value("bnserve_reload_failures_total", model="iris") == 1


def test_metrics_port_zero_turns_the_endpoint_off(tmp_path: Path) -> None:
    install_version(tmp_path / "iris", 1, model_bytes(seed=1)[0])
    server = ServerProcess(["--model", str(tmp_path / "iris"), "--metrics-port", "0"])
    try:
        server.wait_ready()
        assert "metrics off" in server.log()
    finally:
        assert server.stop() == 0


def test_metrics_port_in_use_is_named(tmp_path: Path) -> None:
    install_version(tmp_path / "iris", 1, model_bytes(seed=1)[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess(["--model", str(tmp_path / "iris"), "--metrics-port", str(port)])
        exit_code = server.process.wait(timeout=60)
        server.stop()
    assert exit_code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in server.log()


def test_the_metrics_port_serves_metrics_only(tmp_path: Path) -> None:
    install_version(tmp_path / "iris", 1, model_bytes(seed=1)[0])
    metrics_port = free_port()
    server = ServerProcess(["--model", str(tmp_path / "iris"), "--metrics-port", str(metrics_port)])
    try:
        server.wait_ready()
        for path in ("/v2/health/ready", "/", "/metrics/../x"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=10)
            assert missing.value.code == 404
            missing.value.close()
        missing.value.close()
    finally:
        assert server.stop() == 0


def test_the_access_log_writes_one_structured_line_per_call(tmp_path: Path) -> None:
    import json

    install_version(tmp_path / "iris", 1, model_bytes(seed=1)[0])
    server = ServerProcess(
        ["--model", str(tmp_path / "iris"), "--access-log-sample", "1",
         "--log-format", "json"]
    )  # fmt: skip
    row = np.zeros(NUM_FEATURES, np.float32)
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            stub.Predict(pb.PredictRequest(model_name="iris", features=row, id="req-1"))
            with pytest.raises(grpc.RpcError):
                stub.Predict(pb.PredictRequest(model_name="tulip", features=row, id="req-2"))
        server.wait_for(r'"id": "req-2"')
    finally:
        assert server.stop() == 0
    entries = [json.loads(line) for line in server.lines if '"logger": "server.access"' in line]
    assert [(e["method"], e["model"], e["version"], e["code"], e["id"]) for e in entries] == [
        (PREDICT, "iris", "1", "OK", "req-1"),
        (PREDICT, "", "", "NOT_FOUND", "req-2"),
    ]
    assert all(e["ms"] > 0 and e["peer"].startswith("ipv4:127.0.0.1") for e in entries)


def test_no_access_log_by_default(tmp_path: Path) -> None:
    install_version(tmp_path / "iris", 1, model_bytes(seed=1)[0])
    server = ServerProcess(["--model", str(tmp_path / "iris")])
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            stub.Predict(pb.PredictRequest(features=np.zeros(NUM_FEATURES, np.float32)))
    finally:
        assert server.stop() == 0
    assert not [line for line in server.lines if "server.access" in line]
