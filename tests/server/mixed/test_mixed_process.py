"""A mixed model served by `python -m bnserve.server` with its defaults (HTTP and metrics on): raw
rows over REST JSON (the curl request of docs/serving.md) and v2 gRPC, the unseen-level counter
on /metrics; and with `--processes 2`, every process answering the same and the counters summed."""

from __future__ import annotations

import http.client
import json
import re
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from tests.support.mixed_model import PENGUINISH, UNSEEN, Numeric, expected, write_mixed_model
from tests.support.server_process import ServerProcess

SUPERVISOR_READY = r"(\d+) processes serving on port (\d+), ready"
CHILD_PID = r"process (\d+) is pid (\d+)"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel
NUMERIC = {c.name for c in PENGUINISH.columns if isinstance(c, Numeric)}
# One raw record per row: a gap, an empty text, an unseen level.
ROWS = {
    "bill_length_mm": [39.1, None, 46.5],
    "island": ["Torgersen", "Dream", UNSEEN],
    "body_mass_g": [3750.0, 3800.0, None],
    "sex": ["male", "", "female"],
}
EXPECTED = expected(PENGUINISH, ROWS)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed_model(tmp_path_factory.mktemp("mixed") / "model.onnx")


def _rest_infer(port: int) -> dict[str, object]:
    body = {
        "inputs": [
            {
                "name": name,
                "datatype": "FP32" if name in NUMERIC else "BYTES",
                "shape": [len(values), 1],
                "data": values,
            }
            for name, values in ROWS.items()
        ]
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v2/models/penguins/infer", json.dumps(body))
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        return {o["name"]: o["data"] for o in answer["outputs"]}
    finally:
        connection.close()


def _grpc_infer(channel: grpc.Channel) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="penguins")
    for name, values in ROWS.items():
        tensor = request.inputs.add(name=name, shape=[len(values)])
        if name in NUMERIC:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(np.nan if v is None else v for v in values)
        else:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def _unseen(port: int, column: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bnserve_unseen_levels_total" and sample.labels == {
                "model": "penguins",
                "column": column,
            }:
                return sample.value
    return 0.0


def _check(probabilities: object, labels: object) -> None:
    np.testing.assert_allclose(
        np.array(probabilities).reshape(3, -1), EXPECTED["probabilities"], atol=1e-5
    )
    assert list(labels) == EXPECTED["label"].tolist()  # type: ignore[call-overload]


def test_defaults_serve_raw_rows_over_rest_and_grpc(model_path: Path) -> None:
    server = ServerProcess(["--model", str(model_path), "--name", "penguins"])
    try:
        server.wait_ready()
        outputs = _rest_infer(server.http_port)
        _check(outputs["probabilities"], outputs["label"])
        with grpc.insecure_channel(server.target) as channel:
            response = _grpc_infer(channel)
        _check(
            response.outputs[0].contents.fp32_contents, response.outputs[1].contents.int64_contents
        )
        assert _unseen(server.metrics_port, "island") == 2  # one per call
    finally:
        assert server.stop() == 0


def test_two_processes_serve_a_mixed_model(model_path: Path) -> None:
    server = ServerProcess(["--model", str(model_path), "--name", "penguins", "--processes", "2"])
    try:
        match = server.wait_for(SUPERVISOR_READY, 120)
        server.port = int(match.group(2))
        pids = {int(m[1]) for m in re.findall(CHILD_PID, server.log())}
        assert len(pids) == 2
        calls = 0
        reached = False
        with ExitStack() as stack:
            while not reached:
                assert calls < 64, "64 connections never reached both processes"
                channel = stack.enter_context(grpc.insecure_channel(server.target, OWN_CONNECTION))
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="liveness"), timeout=30
                )
                response = _grpc_infer(channel)
                _check(
                    response.outputs[0].contents.fp32_contents,
                    response.outputs[1].contents.int64_contents,
                )
                calls += 1
                reached = _every_process_answered(server, pids)
        assert _unseen(server.metrics_port, "island") == calls
    finally:
        assert server.stop() == 0


def _every_process_answered(server: ServerProcess, pids: set[int]) -> bool:
    """Each child holds an established connection on the port (so it answered a call)."""
    served = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == server.port and fields[3] == "01":
                served.add(int(fields[9]))
    for pid in pids:
        held = False
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = Path.readlink(fd).as_posix()
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in served:
                held = True
                break
        if not held:
            return False
    return True
