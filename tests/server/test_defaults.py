"""The server as its defaults have it (HTTP on, metrics on, drift on), then each mode on top:
`--processes 2`, TLS, bearer tokens, batching, `--model-root`, drift off. Every one is probed
on every door: gRPC health, native Predict, v2 ModelInfer, REST and /metrics.

Issue 24: `--processes 2` exited 2 at start with its defaults (both children bound HTTP 8000)
and the suite never saw it, because every multi-process test turned HTTP off. HTTP and metrics
get free ports here (server_process.py), not 8000 and 9090, which other servers may hold; the
literal default ports are used in a network namespace of the test's own (defaults_probe.py).
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as native_pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2_pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from tests.support.certificates import Pki, make_pki
from tests.support.server_process import ServerProcess
from tests.support.waiting import wait_until

NAME = "digits"
TOKEN = "defaults-matrix-token-0123456789"
SUPERVISOR_READY = r"2 processes serving on port (\d+), ready"
MODES = ["defaults", "processes 2", "tls", "tokens", "batching", "model-root", "drift off"]


@dataclass(frozen=True)
class Digits:
    path: Path  # an exported model with drift statistics, as `bnserve export` writes it
    root: Path  # a model root holding it as digits/1/model.onnx
    rows: np.ndarray  # (R, 64) float32 held-out inputs


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.rundir import load_run
    from bnserve.training.train import train

    directory = tmp_path_factory.mktemp("defaults")
    config = TrainConfig(hidden=(16,), epochs=1, seed=0)
    run_dir = Path(train(config, directory / "run", progress=False).run_dir)
    path = directory / "digits.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=path))
    version = directory / "root" / NAME / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(path.read_bytes())
    rows = load_run(run_dir).heldout_x[:3].astype(np.float32)
    return Digits(path, directory / "root", rows)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _args(mode: str, digits: Digits, pki: Pki, tmp_path: Path) -> list[str]:
    model = ["--model", str(digits.path), "--name", NAME]
    if mode == "processes 2":
        return [*model, "--processes", "2"]
    if mode == "tls":
        return [*model, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    if mode == "tokens":
        tokens = tmp_path / "tokens"
        tokens.write_text(TOKEN + "\n")
        return [*model, "--auth-token-file", str(tokens)]
    if mode == "batching":
        return [*model, "--batching"]
    if mode == "model-root":
        return ["--model-root", str(digits.root)]
    if mode == "drift off":
        return [*model, "--no-drift"]
    return model


@pytest.mark.parametrize("mode", MODES)
def test_every_door_answers(mode: str, digits: Digits, pki: Pki, tmp_path: Path) -> None:
    server = ServerProcess(_args(mode, digits, pki, tmp_path))
    try:
        if mode == "processes 2":
            server.port = int(server.wait_for(SUPERVISOR_READY, 120).group(1))
        else:
            server.wait_ready()
        assert server.http_port and server.metrics_port  # on, as the defaults have them
        tls = ssl.create_default_context(cafile=str(pki.ca_cert)) if mode == "tls" else None
        token = [("authorization", f"Bearer {TOKEN}")] if mode == "tokens" else []
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes())
            channel = grpc.secure_channel(server.target, credentials)
        else:
            channel = grpc.insecure_channel(server.target)
        with channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )  # open without a token, as probes call it
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            native = native_probabilities(channel, digits.rows, token)
            v2 = v2_probabilities(channel, digits.rows, token)
        rest = rest_probabilities(server.http_port, digits.rows, tls, token)
        np.testing.assert_array_equal(native, v2)
        np.testing.assert_array_equal(native, rest)
        assert np.allclose(native.sum(axis=1), 1, atol=1e-5)
        metrics = scrape(server.metrics_port)
        for method in ("bnserve.v1.Predictor/Predict", "inference.GRPCInferenceService/ModelInfer"):
            key = ("bnserve_requests_total", (("code", "OK"), ("method", method), ("model", NAME)))
            assert metrics.get(key) == len(digits.rows), (method, sorted(metrics)[:40])
        rest_infer = ("code", "OK"), ("method", "HTTP /v2/models/{name}/infer"), ("model", NAME)
        assert metrics.get(("bnserve_requests_total", rest_infer)) == len(digits.rows)
        drift = {name for name, _ in metrics if name.startswith("bnserve_drift_")}
        if mode == "drift off":
            assert not drift
        else:
            assert "bnserve_drift_examples" in drift
    finally:
        assert server.stop() == 0


def _private_network() -> bool:
    """Whether this machine lets an unprivileged process make its own network namespace."""
    if shutil.which("unshare") is None:
        return False
    made = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    return made.returncode == 0


@pytest.mark.skipif(not _private_network(), reason="needs `unshare -rn` (user namespaces)")
@pytest.mark.parametrize("processes", ["1", "2"])
def test_literal_defaults_in_a_private_network(digits: Digits, processes: str) -> None:
    """`bnserve serve --model M [--processes 2]` and nothing else: gRPC 50051, HTTP 8000,
    metrics 9090, in a network namespace no other program shares, so nothing can collide."""
    probe = Path(__file__).with_name("defaults_probe.py")
    probed = subprocess.run(
        ["unshare", "-rn", sys.executable, str(probe), str(digits.path), processes],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probed.returncode == 0, probed.stdout + probed.stderr
    assert probed.stdout.splitlines() == [
        "health SERVING on 127.0.0.1:50051",
        "native Predict, v2 ModelInfer and REST on 8000 agree",
        "/metrics on 9090 counted 3 Predict calls",
        "stopped with exit code 0",
    ]


def test_drift_metrics_of_several_processes(digits: Digits, pki: Pki, tmp_path: Path) -> None:
    """The supervisor's /metrics carries each process's drift gauges, labelled by process
    (prometheus-client's multiprocess files carry none: each child writes them to a file)."""
    server = ServerProcess(_args("processes 2", digits, pki, tmp_path))
    try:
        server.port = int(server.wait_for(SUPERVISOR_READY, 120).group(1))
        with grpc.insecure_channel(server.target) as channel:
            native_probabilities(channel, digits.rows, [])

        def drift_examples() -> dict[str, float]:
            return {
                dict(labels)["process"]: value
                for (name, labels), value in scrape(server.metrics_port).items()
                if name == "bnserve_drift_examples" and dict(labels)["window"] == "life"
            }

        wait_until(
            lambda: set(drift_examples()) == {"0", "1"}, "both processes' gauges", interval_s=0.1
        )
        assert all(value >= 0 for value in drift_examples().values())
    finally:
        assert server.stop() == 0


def native_probabilities(channel: grpc.Channel, rows: np.ndarray, token: list) -> np.ndarray:
    stub = predictor_pb2_grpc.PredictorStub(channel)
    answers = [
        stub.Predict(native_pb.PredictRequest(model_name=NAME, features=row), metadata=token,
                     timeout=30).probabilities
        for row in rows
    ]  # fmt: skip
    return np.asarray(answers, dtype=np.float32)


def v2_probabilities(channel: grpc.Channel, rows: np.ndarray, token: list) -> np.ndarray:
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    answers = []
    for row in rows:
        request = v2_pb.ModelInferRequest(model_name=NAME, raw_input_contents=[row.tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=[1, row.size])
        response = stub.ModelInfer(request, metadata=token, timeout=30)
        names = [output.name for output in response.outputs]
        raw = response.raw_output_contents[names.index("probabilities")]
        answers.append(np.frombuffer(raw, dtype="<f4"))
    return np.asarray(answers, dtype=np.float32)


def rest_probabilities(
    port: int, rows: np.ndarray, tls: ssl.SSLContext | None, token: list
) -> np.ndarray:
    headers = {"Content-Type": "application/json", **{k.title(): v for k, v in token}}
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)
    try:
        connection.request("GET", "/v2/health/ready")
        ready = connection.getresponse()
        ready.read()
        assert ready.status == 200
        answers = []
        for row in rows:
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, row.size],
                                "data": row.tolist()}]}  # fmt: skip
            connection.request("POST", f"/v2/models/{NAME}/infer", json.dumps(body), headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            (probabilities,) = [o for o in answer["outputs"] if o["name"] == "probabilities"]
            answers.append(probabilities["data"])
    finally:
        connection.close()
    return np.asarray(answers, dtype=np.float32)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
