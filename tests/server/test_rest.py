"""The Open Inference Protocol over HTTP/REST with raw requests as curl sends them: every
endpoint, every error status, binary tensors, the same answers as gRPC bit for bit, tokens, TLS,
drain and stop."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve.server.app import Extras, Server
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.security.auth import TokenAuthInterceptor
from bnserve.server.settings import ServerSettings
from tests.support.certificates import Pki, make_pki
from tests.support.in_process import start_server
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward
from tests.support.model_gate import ModelGate
from tests.support.server_process import (
    ServerProcess,
    bad_parity_bytes,
    free_port,
    install_version,
    model_bytes,
)
from tests.support.waiting import wait_until

ROWS = np.random.default_rng(5).normal(0, 1.5, (4, NUM_FEATURES)).astype(np.float32)
TOKEN = "rest-token-0123456789abcdef"
HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def rest(test_models: ModelFiles) -> Iterator[Server]:
    server = start_server(
        ServerSettings(workers=8, max_inflight=6, max_message_bytes=64 * 1024),
        {"iris": test_models.classification, "sales": test_models.regression},
        http=True,
    )
    yield server
    server.stop(0)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | dict | None = None,
    headers: dict[str, str] | None = None,
    *,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _infer_body(rows: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}
        ],
        **extra,
    }


def test_health_metadata_and_readiness(rest: Server) -> None:
    port = rest.http_port
    assert call(port, "GET", "/v2/health/live")[::2] == (200, b'{"live":true}')
    assert call(port, "GET", "/v2/health/ready")[::2] == (200, b'{"ready":true}')
    status, headers, body = call(port, "GET", "/v2")
    metadata = json.loads(body)
    assert (status, headers["Content-Type"], metadata["name"]) == (
        200,
        "application/json",
        "bnserve",
    )
    assert "binary_tensor_data" in metadata["extensions"]
    for path in ("/v2/models/iris", "/v2/models/iris/versions/1"):
        status, _, body = call(port, "GET", path)
        assert status == 200
        assert json.loads(body) == {
            "name": "iris",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, NUM_FEATURES]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASS_NAMES)]},
                {"name": "label", "datatype": "INT64", "shape": [-1]},
            ],
        }
        status, _, body = call(port, "GET", path + "/ready")
        assert (status, json.loads(body)) == (200, {"name": "iris", "ready": True})
    status, _, body = call(port, "GET", "/v2/models/iris/config")
    assert status == 200 and json.loads(body)["input"][0]["dims"] == [-1, NUM_FEATURES]


def test_json_infer_equals_grpc_bit_for_bit(rest: Server, test_models: ModelFiles) -> None:
    status, _, body = call(
        rest.http_port, "POST", "/v2/models/iris/infer", _infer_body(ROWS, id="r1")
    )
    assert status == 200, body
    answer = json.loads(body)
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("iris", "1", "r1")
    probabilities, label = answer["outputs"]
    assert (probabilities["name"], probabilities["shape"]) == ("probabilities", [4, 3])
    rest_probabilities = np.asarray(probabilities["data"], dtype=np.float32)

    grpc_answer = _grpc_raw_infer(rest.port, "iris", ROWS)
    grpc_probabilities = np.frombuffer(grpc_answer.raw_output_contents[0], dtype="<f4")
    assert rest_probabilities.tobytes() == grpc_probabilities.tobytes()
    grpc_labels = np.frombuffer(grpc_answer.raw_output_contents[1], dtype="<i8")
    assert label["data"] == grpc_labels.tolist()
    expected = numpy_forward(test_models.classification_weights, ROWS, "classification")
    assert label["data"] == expected["label"].tolist()


def test_binary_tensors_in_and_out(rest: Server) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(ROWS.shape),
                    "parameters": {"binary_data_size": ROWS.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, body = call(
        rest.http_port,
        "POST",
        "/v2/models/iris/infer",
        header + ROWS.tobytes(),
        {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, body
    json_length = int(headers[HEADER_LENGTH])
    answer = json.loads(body[:json_length])
    (output,) = answer["outputs"]
    size = output["parameters"]["binary_data_size"]
    assert size == len(body) - json_length == ROWS.shape[0] * len(CLASS_NAMES) * 4
    grpc_answer = _grpc_raw_infer(rest.port, "iris", ROWS)
    assert body[json_length:] == grpc_answer.raw_output_contents[0]


def test_regression_and_class_count(rest: Server) -> None:
    status, _, body = call(rest.http_port, "POST", "/v2/models/sales/infer", _infer_body(ROWS))
    assert status == 200
    (y,) = json.loads(body)["outputs"]
    grpc_y = np.frombuffer(_grpc_raw_infer(rest.port, "sales", ROWS).raw_output_contents[0], "<f4")
    assert np.asarray(y["data"], np.float32).tobytes() == grpc_y.tobytes()
    top = _infer_body(
        ROWS, outputs=[{"name": "probabilities", "parameters": {"classification": 1}}]
    )
    status, _, body = call(rest.http_port, "POST", "/v2/models/iris/infer", top)
    (classes,) = json.loads(body)["outputs"]
    assert (classes["datatype"], classes["shape"]) == ("BYTES", [4, 1])
    labels = np.frombuffer(_grpc_raw_infer(rest.port, "iris", ROWS).raw_output_contents[1], "<i8")
    assert [int(entry.split(":")[1]) for entry in classes["data"]] == labels.tolist()
    assert [entry.split(":")[2] for entry in classes["data"]] == [CLASS_NAMES[i] for i in labels]


def _grpc_raw_infer(port: int, model: str, rows: np.ndarray) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[rows.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=rows.shape)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)


NAN_ROW = [[float("nan")] + [0.0] * (NUM_FEATURES - 1)]
# A header promising 24 binary bytes, followed by 8.
SHORT_BINARY = (
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,6],'
    b'"parameters":{"binary_data_size":24}}]}' + bytes(8)
)
BAD_REQUESTS = [
    ("not JSON", b"{inputs", {}, 400, "not JSON"),
    ("JSON not an object", b"[1, 2]", {}, 400, "JSON object"),
    ("JSON nested 50 000 deep", b"[" * 50_000, {}, 400, "nests JSON deeper"),
    ("ragged rows", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 6],
                                 "data": [[0.0] * 6, [0.0] * 5]}]}, {}, 400, "must be numbers"),
    ("no inputs", {"inputs": []}, {}, 400, "no inputs (empty request)"),
    ("unknown input", {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 6],
                                   "data": [0.0] * 6}]}, {}, 400, "unknown input 'features'"),
    ("wrong datatype", {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 6],
                                    "data": [0] * 6}]}, {}, 400, "datatype 'INT64'"),
    ("wrong width", _infer_body(ROWS[:, :5]), {}, 400, "shape [4, 5]"),
    ("count disagrees", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 6],
                                     "data": [0.0] * 6}]}, {}, 400, "needs 12 values"),
    ("strings as data", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6],
                                     "data": ["a"] * 6}]}, {}, 400, "must be numbers"),
    ("NaN", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": NAN_ROW}]},
     {}, 400, "is nan"),
    ("unknown output", _infer_body(ROWS, outputs=[{"name": "logits"}]), {}, 400,
     "unknown output(s) ['logits']"),
    ("class_count on label", _infer_body(ROWS, outputs=[{"name": "label",
     "parameters": {"classification": 2}}]), {}, 400, "'probabilities' output"),
    ("header length past the body", b"{}", {HEADER_LENGTH: "99"}, 400, HEADER_LENGTH),
    ("binary size past the body", SHORT_BINARY, {HEADER_LENGTH: str(len(SHORT_BINARY) - 8)}, 400,
     "binary_data_size"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "status", "phrase"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_400_naming_the_problem(rest, body, headers, status, phrase) -> None:
    got, response_headers, answer = call(
        rest.http_port, "POST", "/v2/models/iris/infer", body, headers
    )
    assert got == status, answer
    assert response_headers["Content-Type"] == "application/json"
    assert phrase in json.loads(answer)["error"]
    assert call(rest.http_port, "POST", "/v2/models/iris/infer", _infer_body(ROWS))[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "phrase"),
    [
        ("GET", "/v2/models/tulip", 404, "no model named 'tulip'"),
        ("GET", "/v2/models/tulip/ready", 404, "no model named 'tulip'"),
        ("POST", "/v2/models/tulip/infer", 404, "no model named 'tulip'"),
        ("GET", "/v2/models/iris/versions/9", 404, "no version '9'"),
        ("POST", "/v2/models/iris/versions/9/infer", 404, "no version '9'"),
        ("GET", "/metrics", 404, "no endpoint GET /metrics"),
        ("GET", "/", 404, "no endpoint GET /"),
        ("DELETE", "/v2/models/iris/infer", 405, "DELETE is not allowed"),
        ("GET", "/v2/models/iris/infer", 405, "GET is not allowed"),
        ("POST", "/v2/repository/models/iris/load", 501, "closed"),
    ],
)
def test_unknown_things_get_their_status(rest, method, path, status, phrase) -> None:
    got, _, answer = call(rest.http_port, method, path, b"" if method != "GET" else None)
    assert got == status, answer
    assert phrase in json.loads(answer)["error"]


def test_body_over_the_limit_is_413(rest: Server) -> None:
    big = _infer_body(np.tile(ROWS, (1000, 1)))  # ~500 KB of JSON
    status, _, answer = call(rest.http_port, "POST", "/v2/models/iris/infer", big)
    assert status == 413 and "65536" in json.loads(answer)["error"]


def test_statistics_over_rest_equal_grpc(rest: Server) -> None:
    call(rest.http_port, "POST", "/v2/models/sales/infer", _infer_body(ROWS[:2]))
    status, _, body = call(rest.http_port, "GET", "/v2/models/sales/stats")
    assert status == 200
    (stats,) = json.loads(body)["model_stats"]
    with grpc.insecure_channel(f"127.0.0.1:{rest.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        (grpc_stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="sales")).model_stats
    assert stats["inference_count"] == grpc_stats.inference_count >= 2
    assert stats["inference_stats"]["success"] == {
        "count": grpc_stats.inference_stats.success.count,
        "ns": grpc_stats.inference_stats.success.ns,
    }
    status, _, body = call(rest.http_port, "POST", "/v2/repository/index", b"")
    assert (status, json.loads(body)) == (
        200,
        [
            {"name": "iris", "version": "1", "state": "READY"},
            {"name": "sales", "version": "1", "state": "READY"},
        ],
    )


def test_not_ready_model_is_503(test_models: ModelFiles) -> None:
    server = start_server(ServerSettings(), {"bad_parity": test_models.bad_parity}, http=True)
    try:
        status, _, body = call(server.http_port, "GET", "/v2/health/ready")
        assert (status, json.loads(body)) == (503, {"ready": False})
        status, _, body = call(server.http_port, "GET", "/v2/models/bad_parity/ready")
        assert status == 503 and "parity" in json.loads(body)["error"]
        status, _, body = call(
            server.http_port, "POST", "/v2/models/bad_parity/infer", _infer_body(ROWS)
        )
        assert status == 503 and "failed" in json.loads(body)["error"]
    finally:
        server.stop(0)


def test_overloaded_is_429_at_once(test_models: ModelFiles) -> None:
    """max_inflight 1 taken by a held gRPC call: REST is refused by the same limiter."""
    server = start_server(
        ServerSettings(batching=True, workers=4, max_inflight=1),
        {"iris": test_models.classification},
        http=True,
    )
    gate = ModelGate(server.repository.get("iris").batcher)  # holds the model's run
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(
                model_name="iris", raw_input_contents=[ROWS[:1].tobytes()]
            )
            request.inputs.add(name="x", datatype="FP32", shape=(1, NUM_FEATURES))
            held = stub.ModelInfer.future(request, timeout=30)
            wait_until(lambda: server.limiter.in_flight >= 1, "the held call admitted", 10, 0.01)
            status, headers, body = call(
                server.http_port, "POST", "/v2/models/iris/infer", _infer_body(ROWS[:1])
            )
            assert status == 429 and "max_inflight" in json.loads(body)["error"]
            assert headers["Retry-After"] == "1"
            gate.release()
            assert held.result().outputs
    finally:
        gate.release()
        server.stop(0)


def test_drain_then_stop(test_models: ModelFiles) -> None:
    server = start_server(ServerSettings(), {"iris": test_models.classification}, http=True)
    port = server.http_port
    server.drain()
    assert call(port, "GET", "/v2/health/ready")[0] == 503
    assert call(port, "GET", "/v2/health/live")[0] == 200
    assert call(port, "POST", "/v2/models/iris/infer", _infer_body(ROWS))[0] == 200
    server.stop(1)
    with pytest.raises(ConnectionRefusedError):
        call(port, "GET", "/v2/health/live")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_and_tokens_over_http(pki: Pki, test_models: ModelFiles, tmp_path: Path) -> None:
    """The CLI's server: the HTTP port takes the gRPC port's certificates and tokens."""
    http_port = free_port()
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--http-port", str(http_port),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
        env={"BNSERVE_AUTH_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        server.wait_ready()
        assert f"on https://127.0.0.1:{http_port}/v2" in server.log()
        trusted = ssl.create_default_context(cafile=str(pki.ca_cert))
        assert call(http_port, "GET", "/v2/health/ready", tls=trusted)[0] == 200  # probes: open
        body = _infer_body(ROWS)
        status, headers, answer = call(
            http_port, "POST", "/v2/models/iris/infer", body, tls=trusted
        )
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in json.loads(answer)["error"]
        wrong = {"Authorization": "Bearer not-the-token-0123456789"}
        assert call(http_port, "POST", "/v2/models/iris/infer", body, wrong, tls=trusted)[0] == 401
        assert call(http_port, "GET", "/v2/models/iris", None, wrong, tls=trusted)[0] == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        status, _, answer = call(
            http_port, "POST", "/v2/models/iris/infer", body, good, tls=trusted
        )
        assert status == 200 and json.loads(answer)["outputs"]
        untrusted = ssl.create_default_context(cafile=str(pki.other_ca_cert))
        with pytest.raises(ssl.SSLError):
            call(http_port, "GET", "/v2/health/live", tls=untrusted)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            call(http_port, "GET", "/v2/health/live")  # plaintext to a TLS port
    finally:
        assert server.stop() == 0


HTTP_PROBE = Path(__file__).with_name("triton_http_probe.py")


def test_tritonclient_http_sync_and_aio(rest: Server, test_models: ModelFiles) -> None:
    completed = subprocess.run(
        [sys.executable, str(HTTP_PROBE), f"127.0.0.1:{rest.http_port}", "iris",
         json.dumps(ROWS.tolist())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    grpc_answer = _grpc_raw_infer(rest.port, "iris", ROWS)
    grpc_probabilities = grpc_answer.raw_output_contents[0].hex()
    # Binary tensors, JSON tensors and the aio client: the very bytes gRPC answers.
    assert answer["binary_probabilities"] == grpc_probabilities
    assert answer["json_probabilities"] == grpc_probabilities
    assert answer["aio"]["probabilities"] == grpc_probabilities
    expected = numpy_forward(test_models.classification_weights, ROWS, "classification")
    assert answer["binary_label"] == expected["label"].tolist()
    assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True)
    assert answer["unknown_ready"] is False
    assert (answer["aio"]["ready"], answer["aio"]["model_ready"]) == (True, True)
    assert answer["server_metadata"]["name"] == "bnserve"
    assert answer["model_metadata"]["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, NUM_FEATURES]}
    ]
    assert answer["aio"]["metadata"] == answer["model_metadata"]
    assert answer["config"]["input"][0]["data_type"] == "TYPE_FP32"
    assert answer["statistics"]["model_stats"][0]["name"] == "iris"
    assert {"name": "iris", "version": "1", "state": "READY"} in answer["index"]
    best = np.argsort(-expected["probabilities"], axis=1)[:, :2]
    assert [[int(c.split(":")[1]) for c in row] for row in answer["top2"]] == best.tolist()
    assert answer["unknown"]["status"] == "404", answer["unknown"]
    assert "no model named 'no-such-model'" in answer["unknown"]["message"]


def test_hot_reload_is_seen_over_http(tmp_path: Path) -> None:
    """A new version swapped in by a scan is served over REST as over gRPC; a refused one
    is UNAVAILABLE with its reason in the repository index."""
    model_dir = tmp_path / "iris"
    install_version(model_dir, 1, model_bytes(seed=1)[0])
    server = Server.create(
        ServerSettings(
            model=(str(model_dir),), host="127.0.0.1", port=0, http_port=free_port(),
            reload_interval_s=0, reload_settle_s=0, workers=6, max_inflight=4,
        )
    )  # fmt: skip
    server.start()
    try:
        port = server.http_port
        assert json.loads(call(port, "GET", "/v2/models/iris")[2])["versions"] == ["1"]
        v2_bytes, v2_weights = model_bytes(seed=2)
        install_version(model_dir, 2, v2_bytes)
        install_version(model_dir, 3, bad_parity_bytes(seed=3))
        server.versions.scan()
        assert json.loads(call(port, "GET", "/v2/models/iris")[2])["versions"] == ["1", "2"]
        status, _, body = call(port, "POST", "/v2/models/iris/infer", _infer_body(ROWS))
        assert status == 200 and json.loads(body)["model_version"] == "2"
        expected = numpy_forward(v2_weights, ROWS, "classification")["probabilities"]
        np.testing.assert_allclose(
            json.loads(body)["outputs"][0]["data"], expected.ravel(), atol=1e-5
        )
        status, _, body = call(port, "POST", "/v2/models/iris/versions/3/infer", _infer_body(ROWS))
        assert status == 503 and "parity gate failed" in json.loads(body)["error"]
        index = json.loads(call(port, "POST", "/v2/repository/index", b"{}")[2])
        assert [(m["version"], m["state"]) for m in index] == [
            ("1", "READY"),
            ("2", "READY"),
            ("3", "UNAVAILABLE"),
        ]
        assert "parity gate failed" in index[2]["reason"]
    finally:
        server.stop(0)


def test_stop_lets_an_http_call_in_flight_finish(test_models: ModelFiles) -> None:
    """A call waiting in the batcher when stop(grace) begins is answered, not cut."""
    server = start_server(
        ServerSettings(batching=True, workers=4, max_inflight=2),
        {"iris": test_models.classification},
        http=True,
    )
    gate = ModelGate(server.repository.get("iris").batcher)  # holds the call in the model
    answers: list[int] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            call(server.http_port, "POST", "/v2/models/iris/infer", _infer_body(ROWS[:1]))[0]
        )
    )
    caller.start()
    wait_until(lambda: server.limiter.in_flight >= 1, "the call admitted", 10, interval_s=0.01)
    wait_until(lambda: gate.waiting == 1, "the call reaches the model")
    stopping = threading.Thread(target=server.stop, args=(5,))
    stopping.start()  # stop begins while the call is held in the model
    gate.release()
    stopping.join(15)
    caller.join(10)
    assert answers == [200]


def test_http_calls_are_counted_in_metrics(test_models: ModelFiles) -> None:
    metrics = ServerMetrics()
    server = start_server(
        ServerSettings(),
        {"iris": test_models.classification},
        http=True,
        metrics=metrics,
        observer=CallObserver(metrics),
    )
    try:
        call(server.http_port, "POST", "/v2/models/iris/infer", _infer_body(ROWS))
        call(server.http_port, "POST", "/v2/models/tulip/infer", _infer_body(ROWS))
        samples = {
            (s.labels["method"], s.labels["code"]): s.value
            for family in metrics.registry.collect()
            if family.name == "bnserve_requests"
            for s in family.samples
            if s.name == "bnserve_requests_total"
        }
    finally:
        server.stop(0)
    infer = "HTTP /v2/models/{name}/infer"
    assert samples[(infer, "OK")] == 1 and samples[(infer, "NOT_FOUND")] == 1


def test_model_control_needs_tokens_to_open(test_models: ModelFiles) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bnserve.server", "--model", str(test_models.classification),
         "--model-control", "--port", "0", "--http-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "--model-control needs bearer tokens" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_model_control_load_rescans_behind_a_token(tmp_path: Path) -> None:
    """--model-control: load (gRPC and REST) rescans now; without a token both refuse;
    unload stays closed."""
    model_dir = tmp_path / "iris"
    install_version(model_dir, 1, model_bytes(seed=1)[0])
    auth = TokenAuthInterceptor([hashlib.sha256(TOKEN.encode()).digest()])
    server = Server.create(
        ServerSettings(
            model=(str(model_dir),), host="127.0.0.1", port=0, http_port=free_port(),
            reload_interval_s=0, reload_settle_s=0, model_control=True,
        ),
        Extras(interceptors=[auth], http_auth=auth.accepts),
    )  # fmt: skip
    server.start()
    good = {"Authorization": f"Bearer {TOKEN}"}
    try:
        port = server.http_port
        assert call(port, "POST", "/v2/repository/models/iris/load", b"")[0] == 401
        install_version(model_dir, 2, model_bytes(seed=2)[0])
        status, _, body = call(port, "POST", "/v2/repository/models/iris/load", b"", good)
        assert (status, json.loads(body)) == (200, {})
        assert json.loads(call(port, "GET", "/v2/models/iris", None, good)[2])["versions"] == [
            "1",
            "2",
        ]
        status, _, body = call(port, "POST", "/v2/repository/models/tulip/load", b"", good)
        assert status == 404
        status, _, body = call(port, "POST", "/v2/repository/models/iris/unload", b"", good)
        assert status == 501 and "remove the version directory" in json.loads(body)["error"]
        install_version(model_dir, 3, model_bytes(seed=3)[0])
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="iris"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            metadata = [("authorization", f"Bearer {TOKEN}")]
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="iris"), metadata=metadata
            )
            assert server.repository.versions("iris") == ["1", "2", "3"]
            with pytest.raises(grpc.RpcError) as closed:
                stub.RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name="iris"), metadata=metadata
                )
            assert closed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)


def test_a_request_aiohttp_cannot_parse_is_one_warning_line_no_traceback(
    rest: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A DEL in a header value (found by test_rest_fuzz.py's slow run): 400, one throttled
    warning line naming the peer and the reason, never ERROR or a traceback."""
    request = (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nX-Request-Id: \x7f\xca\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with caplog.at_level("DEBUG"):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", rest.http_port), timeout=10) as sock:
                sock.sendall(request)
                answer = sock.recv(65536)
            assert answer.split(b" ", 2)[1] == b"400", answer[:200]
        wait_until(lambda: any("malformed HTTP" in r.getMessage() for r in caplog.records), "log")
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    (line,) = [r.getMessage() for r in caplog.records if "malformed HTTP" in r.getMessage()]
    assert line.startswith("malformed HTTP request from 127.0.0.1 answered 400: Invalid header")
