"""`--unseen-levels error`: a request holding a categorical level the model never saw is refused
(INVALID_ARGUMENT / HTTP 400 naming the column, the value and the row) over v2 gRPC, REST and
the native Predict / PredictBatch / PredictStream, and `bnserve predict --csv` says so in one
line; missing cells and rare training levels are not unseen. The default, count, scores it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bnserve.server.app import Server
from bnserve.server.clients.predict import main as predict
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as native
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.mixed_model import PENGUINISH, UNSEEN, Numeric, expected, write_mixed_model
from tests.support.native_values import native_values

NUMERIC = {c.name for c in PENGUINISH.columns if isinstance(c, Numeric)}
# Seen levels, a rare training level (scored as <other>, not unseen), missing cells ("", a
# missing token, null): all scored. Row 3 holds the unseen level.
GOOD = {
    "bill_length_mm": [40.5, None, 47.25, 39.0],
    "island": ["Dream", "Zeta", "", "NA"],
    "body_mass_g": [3800.0, 4400.0, None, 5000.0],
    "sex": ["male", None, "female", "NA"],
}
BAD = {name: [*values, values[0]] for name, values in GOOD.items()}
BAD["island"][-1] = UNSEEN
BAD_ROW = len(BAD["island"]) - 1
REFUSAL = f"column 'island', row {BAD_ROW}: level {UNSEEN!r} was never seen in training"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed_model(tmp_path_factory.mktemp("unseen") / "penguins.onnx")


@pytest.fixture(scope="module")
def server(model_path: Path, metrics: ServerMetrics) -> Iterator[Server]:
    settings = ServerSettings(workers=8, max_inflight=6, unseen_levels="error")
    started = start_server(settings, {"penguins": model_path}, http=True, metrics=metrics)
    yield started
    started.stop(0)


def _expected(rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """The numpy path's answer (a missing text as "", as the server decodes null)."""
    texts = {n: ["" if v is None else v for v in values] for n, values in rows.items()}
    return expected(PENGUINISH, {n: rows[n] if n in NUMERIC else texts[n] for n in rows})


def _v2_request(rows: dict[str, list[Any]]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="penguins")
    for name, values in rows.items():
        count = len(values)
        if name in NUMERIC:
            tensor = request.inputs.add(name=name, datatype="FP32", shape=[count, 1])
            numbers = [float("nan") if v is None else v for v in values]
            tensor.contents.fp32_contents.extend(numbers)
        else:
            tensor = request.inputs.add(name=name, datatype="BYTES", shape=[count, 1])
            tensor.contents.bytes_contents.extend((v or "").encode() for v in values)
    return request


def _rest(server: Server, rows: dict[str, list[Any]]) -> tuple[int, dict[str, Any]]:
    inputs = [
        {
            "name": name,
            "datatype": "FP32" if name in NUMERIC else "BYTES",
            "shape": [len(values)],
            "data": values,
        }
        for name, values in rows.items()
    ]
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", "/v2/models/penguins/infer", json.dumps({"inputs": inputs}))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _columns(rows: dict[str, list[Any]]) -> list[native.Column]:
    return [
        native.Column(name=name, numbers=[float("nan") if v is None else v for v in values])
        if name in NUMERIC
        else native.Column(name=name, texts=[v or "" for v in values])
        for name, values in rows.items()
    ]


def _refused(call: Any, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as error:
        result = call(request)
        if not hasattr(result, "ListFields"):  # a stream: read it to its end
            list(result)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(error.value.details())


def test_missing_cells_and_rare_levels_are_scored(server: Server, channel: grpc.Channel) -> None:
    want = _expected(GOOD)
    inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    answer = inference.ModelInfer(_v2_request(GOOD))
    scored = np.reshape(answer.outputs[0].contents.fp32_contents, want["probabilities"].shape)
    np.testing.assert_allclose(scored, want["probabilities"], atol=1e-5)
    status, rest = _rest(server, GOOD)
    assert status == 200, rest
    stub = predictor_pb2_grpc.PredictorStub(channel)
    request = native.PredictBatchRequest(model_name="penguins", columns=_columns(GOOD))
    batch = stub.PredictBatch(request)
    assert list(batch.labels) == want["label"].tolist()
    for row in range(len(GOOD["island"])):
        stub.Predict(native.PredictRequest(model_name="penguins", values=native_values(GOOD, row)))


def test_v2_grpc_and_rest_refuse_naming_column_value_and_row(
    server: Server, channel: grpc.Channel, metrics: ServerMetrics
) -> None:
    def unseen() -> float:
        labels = {"model": "penguins", "column": "island"}
        return metrics.registry.get_sample_value("bnserve_unseen_levels_total", labels) or 0.0

    before = unseen()
    inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert REFUSAL in _refused(inference.ModelInfer, _v2_request(BAD))
    status, answer = _rest(server, BAD)
    assert status == 400 and REFUSAL in answer["error"], answer
    assert unseen() - before == 2, "a refused unseen level is still counted"
    # Triton's stream answers the refusal in its message and goes on.
    (streamed,) = inference.ModelStreamInfer(iter([_v2_request(BAD)]))
    assert REFUSAL in streamed.error_message


def test_native_predict_batch_and_stream_refuse(channel: grpc.Channel) -> None:
    stub = predictor_pb2_grpc.PredictorStub(channel)
    one = native.PredictRequest(model_name="penguins", values=native_values(BAD, BAD_ROW))
    assert f"column 'island', row 0: level {UNSEEN!r}" in _refused(stub.Predict, one)
    batch = native.PredictBatchRequest(model_name="penguins", columns=_columns(BAD))
    assert REFUSAL in _refused(stub.PredictBatch, batch)
    stream = [
        native.PredictRequest(model_name="penguins", values=native_values(BAD, row), id=f"m{row}")
        for row in range(len(BAD["island"]))
    ]
    details = _refused(stub.PredictStream, iter(stream))
    assert details.startswith(f"stream message {BAD_ROW} (id 'm{BAD_ROW}'): column 'island'")


def test_predict_csv_reports_the_refusal_in_one_line(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "raw.csv"
    lines = ["bill_length_mm,island,body_mass_g,sex", "40.5,Dream,3800,male", "41,Atlantis,4000,"]
    path.write_text("\n".join(lines) + "\n")
    code = predict(["--target", f"127.0.0.1:{server.port}", "--csv", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"bnserve predict: error: {path} line 3: column 'island', row 0: level 'Atlantis' was "
        "never seen in training; this server refuses unseen levels (--unseen-levels error; "
        "ModelInfo lists the column's levels)"
    ]


def test_the_default_counts_and_scores(model_path: Path) -> None:
    assert ServerSettings().unseen_levels == "count"
    server = start_server(ServerSettings(workers=4, max_inflight=2), {"penguins": model_path})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = inference.ModelInfer(_v2_request(BAD))
    finally:
        server.stop(0)
    want = _expected(BAD)
    assert list(answer.outputs[1].contents.int64_contents) == want["label"].tolist()


def test_a_bad_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="unseen_levels='drop' must be 'count' or 'error'"):
        ServerSettings(unseen_levels="drop")
