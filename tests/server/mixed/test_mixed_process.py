"""The exported penguins model served by `python -m bnserve.server` with its defaults (HTTP and
metrics on): its raw reference rows over REST JSON (the curl request of docs/serving.md) and v2
gRPC answer its reference outputs, the unseen-level counter on /metrics; and with
`--processes 2`, every process answering the same and the counters summed."""

from __future__ import annotations

import http.client
import json
import re
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from tests.server.mixed.conftest import PenguinsExport
from tests.support.server_process import ServerProcess

SUPERVISOR_READY = r"(\d+) processes serving on port (\d+), ready"
CHILD_PID = r"process (\d+) is pid (\d+)"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel


def _rest_infer(penguins: PenguinsExport, port: int) -> dict[str, object]:
    body = {
        "inputs": [
            {
                "name": name,
                "datatype": "BYTES" if penguins.kinds[name] == "categorical" else "FP32",
                "shape": [len(values), 1],
                "data": values,
            }
            for name, values in penguins.rows.items()
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


def _grpc_infer(penguins: PenguinsExport, channel: grpc.Channel) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="penguins")
    for name, values in penguins.rows.items():
        tensor = request.inputs.add(name=name, shape=[len(values)])
        if penguins.kinds[name] == "categorical":
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
        else:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(np.nan if v is None else v for v in values)
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


def _check(penguins: PenguinsExport, probabilities: object, labels: object) -> None:
    np.testing.assert_allclose(
        np.array(probabilities).reshape(len(penguins.labels), -1),
        penguins.probabilities,
        atol=1e-5,
    )
    assert list(labels) == penguins.labels.tolist()  # type: ignore[call-overload]


def _unseen_per_call(penguins: PenguinsExport) -> int:
    """The reference rows' island cells that are no level of the training split."""
    return sum(1 for cell in penguins.rows["island"] if cell.startswith("<unseen"))


def test_defaults_serve_raw_rows_over_rest_and_grpc(penguins: PenguinsExport) -> None:
    server = ServerProcess(["--model", str(penguins.model), "--name", "penguins"])
    try:
        server.wait_ready()
        outputs = _rest_infer(penguins, server.http_port)
        _check(penguins, outputs["probabilities"], outputs["label"])
        with grpc.insecure_channel(server.target) as channel:
            response = _grpc_infer(penguins, channel)
        _check(
            penguins,
            response.outputs[0].contents.fp32_contents,
            response.outputs[1].contents.int64_contents,
        )
        assert _unseen_per_call(penguins) >= 1
        assert _unseen(server.metrics_port, "island") == 2 * _unseen_per_call(penguins)
    finally:
        assert server.stop() == 0


def test_two_processes_serve_a_mixed_model(penguins: PenguinsExport) -> None:
    server = ServerProcess(
        ["--model", str(penguins.model), "--name", "penguins", "--processes", "2"]
    )
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
                response = _grpc_infer(penguins, channel)
                _check(
                    penguins,
                    response.outputs[0].contents.fp32_contents,
                    response.outputs[1].contents.int64_contents,
                )
                calls += 1
                reached = _every_process_answered(server, pids)
        assert _unseen(server.metrics_port, "island") == calls * _unseen_per_call(penguins)
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
