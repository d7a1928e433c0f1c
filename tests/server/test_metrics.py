"""The Prometheus endpoint of a real server process: calls by method and status code, latency,
batch sizes, versions loaded, reload failures."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from model_builder import NUM_FEATURES
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, corrupt_bytes, free_port, install_version, model_bytes

from server.gen.bnserve.v1 import predictor_pb2 as pb
from server.gen.bnserve.v1 import predictor_pb2_grpc

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
        install_version(model_dir, 2, corrupt_bytes(model_bytes(seed=2)[0]))
        server.wait_for("version 2 refused")
        samples = _scrape(metrics_port)
    finally:
        assert server.stop() == 0

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("bnserve_requests_total", method=PREDICT, code="OK") == 7
    assert value("bnserve_requests_total", method=PREDICT, code="INVALID_ARGUMENT") == 2
    assert value("bnserve_requests_total", method=PREDICT, code="NOT_FOUND") == 1
    assert value("bnserve_requests_total", method=BATCH, code="OK") == 1
    assert value("bnserve_requests_total", method=STREAM, code="OK") == 1  # a stream is one call
    assert value("bnserve_request_duration_seconds_count", method=PREDICT) == 10
    assert value("bnserve_request_duration_seconds_bucket", method=PREDICT, le="+Inf") == 10
    assert 0 < value("bnserve_request_duration_seconds_sum", method=PREDICT) < 10
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
    assert exit_code == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in server.log()
