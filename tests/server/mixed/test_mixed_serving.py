"""A mixed model (text columns and gaps, bnserve.format "2") served over every API: v2 gRPC
(typed and raw), REST JSON and Triton's binary tensors (tritonclient.http), the native Predict /
PredictBatch / PredictStream, the metadata each lists, one refusal per bad input naming the
column, the unseen-level counter, and the parity gate over raw reference rows."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as native
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.models.model import Model, SessionThreads
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.errors import ModelLoadError
from bnserve.server.plane.inputs import Columns, concatenate, take
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.mixed_model import (
    PENGUINISH,
    UNSEEN,
    Numeric,
    expected,
    reference_rows,
    write_mixed_model,
)
from tests.support.native_values import native_values

ROWS = reference_rows(PENGUINISH)  # raw rows: gaps, "", an unseen level, every kept level
N = len(ROWS["island"])
EXPECTED = expected(PENGUINISH, ROWS)
NUMERIC = [c.name for c in PENGUINISH.columns if isinstance(c, Numeric)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed_model(tmp_path_factory.mktemp("mixed") / "penguins.onnx")


@pytest.fixture(scope="module")
def server(model_path: Path, metrics: ServerMetrics) -> Iterator[Server]:
    started = start_server(
        ServerSettings(workers=8, max_inflight=6),
        {"penguins": model_path},
        http=True,
        metrics=metrics,
    )
    yield started
    started.stop(0)


@pytest.fixture(scope="module")
def inference(channel: grpc.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def predictor(channel: grpc.Channel) -> predictor_pb2_grpc.PredictorStub:
    return predictor_pb2_grpc.PredictorStub(channel)


def _numbers(values: list[Any]) -> list[float]:
    return [float("nan") if value is None else value for value in values]


def _typed_request(rows: dict[str, list[Any]] = ROWS, **changes: Any) -> pb.ModelInferRequest:
    """A typed-contents ModelInfer request, one [N, 1] input per column; changes: column →
    (datatype, shape, values) to replace, or None to leave it out."""
    request = pb.ModelInferRequest(model_name="penguins")
    columns: dict[str, Any] = {
        name: ("FP32" if name in NUMERIC else "BYTES", [len(values), 1], values)
        for name, values in rows.items()
    }
    columns.update(changes)
    for name, column in columns.items():
        if column is None:
            continue
        datatype, shape, values = column
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(str(v).encode() for v in values)
        elif datatype == "INT64":
            tensor.contents.int64_contents.extend(values)
        elif datatype == "INT32":
            tensor.contents.int_contents.extend(values)
        elif datatype == "FP64":
            tensor.contents.fp64_contents.extend(_numbers(values))
        else:
            tensor.contents.fp32_contents.extend(_numbers(values))
    return request


def _assert_expected(
    probabilities: np.ndarray, labels: np.ndarray, rows: slice = slice(None)
) -> None:
    np.testing.assert_allclose(probabilities, EXPECTED["probabilities"][rows], atol=1e-5)
    assert labels.tolist() == EXPECTED["label"][rows].tolist()


def _post(server: Server, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _get(server: Server, path: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def _json_inputs(rows: dict[str, list[Any]] = ROWS) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "datatype": "FP32" if name in NUMERIC else "BYTES",
            "shape": [len(values)],
            "data": values,  # null: missing (numbers and texts alike)
        }
        for name, values in rows.items()
    ]


# --- scoring over every API --------------------------------------------------------------


def test_v2_grpc_typed_contents_score_raw_rows(inference) -> None:
    response = inference.ModelInfer(_typed_request())
    probabilities = np.array(response.outputs[0].contents.fp32_contents).reshape(N, -1)
    _assert_expected(probabilities, np.array(response.outputs[1].contents.int64_contents))


def test_v2_grpc_typed_fp64_and_int32_contents(inference) -> None:
    whole = [4000 if value is None else round(value) for value in ROWS["body_mass_g"]]
    request = _typed_request(
        bill_length_mm=("FP64", [N], ROWS["bill_length_mm"]),
        body_mass_g=("INT32", [N, 1], whole),
    )
    response = inference.ModelInfer(request)
    want = expected(PENGUINISH, dict(ROWS, body_mass_g=[float(v) for v in whole]))
    probabilities = np.array(response.outputs[0].contents.fp32_contents).reshape(N, -1)
    np.testing.assert_allclose(probabilities, want["probabilities"], atol=1e-5)
    assert list(response.outputs[1].contents.int64_contents) == want["label"].tolist()


def test_v2_grpc_raw_contents_with_bytes_and_other_number_types(inference) -> None:
    request = pb.ModelInferRequest(model_name="penguins")
    for name, values in ROWS.items():
        if name == "body_mass_g":  # INT64 is accepted for a numeric column (values are whole)
            continue
        if name in NUMERIC:
            tensor = request.inputs.add(name=name, datatype="FP64", shape=[N])
            request.raw_input_contents.append(np.array(_numbers(values), "<f8").tobytes())
        else:
            tensor = request.inputs.add(name=name, datatype="BYTES", shape=[N, 1])
            encoded = [value.encode() for value in values]
            request.raw_input_contents.append(
                b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
            )
        del tensor
    whole = [4000 if value is None else round(value) for value in ROWS["body_mass_g"]]
    request.inputs.add(name="body_mass_g", datatype="INT64", shape=[N])
    request.raw_input_contents.append(np.array(whole, "<i8").tobytes())
    response = inference.ModelInfer(request)
    probabilities = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(N, -1)
    labels = np.frombuffer(response.raw_output_contents[1], "<i8")
    rows = dict(ROWS, body_mass_g=[float(v) for v in whole])
    want = expected(PENGUINISH, rows)
    np.testing.assert_allclose(probabilities, want["probabilities"], atol=1e-5)
    assert labels.tolist() == want["label"].tolist()


def test_rest_json_nulls_nested_rows_and_nan(server: Server) -> None:
    inputs = _json_inputs()
    inputs[0]["data"] = [[v] for v in inputs[0]["data"]]  # nested by row, shape [N, 1]
    inputs[0]["shape"] = [N, 1]
    status, answer = _post(server, "/v2/models/penguins/infer", {"inputs": inputs})
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(N, -1)
    _assert_expected(probabilities, np.array(outputs["label"]["data"]))


def test_tritonclient_http_binary_and_json_bytes(server: Server) -> None:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("triton_mixed_probe.py")),
         f"127.0.0.1:{server.http_port}", "penguins", json.dumps(ROWS)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    for form in ("binary", "json"):
        _assert_expected(np.array(answer[form]["probabilities"]), np.array(answer[form]["label"]))
    assert answer["metadata"]["inputs"] == [
        {"name": "bill_length_mm", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "island", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "body_mass_g", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "sex", "datatype": "BYTES", "shape": [-1, 1]},
    ]
    assert [i["data_type"] for i in answer["config"]["input"]] == [
        "TYPE_FP32", "TYPE_STRING", "TYPE_FP32", "TYPE_STRING",
    ]  # fmt: skip


def test_native_predict_predict_stream_and_batch(predictor) -> None:
    answers = [
        predictor.Predict(
            native.PredictRequest(model_name="penguins", values=native_values(ROWS, row))
        )
        for row in range(N)
    ]
    _assert_expected(
        np.array([a.probabilities for a in answers]), np.array([a.label for a in answers])
    )
    assert answers[0].class_name == PENGUINISH.class_names[answers[0].label]
    streamed = list(
        predictor.PredictStream(
            iter(
                native.PredictRequest(
                    model_name="penguins", values=native_values(ROWS, row), id=str(row)
                )
                for row in range(N)
            )
        )
    )
    assert [a.id for a in streamed] == [str(row) for row in range(N)]
    _assert_expected(
        np.array([a.probabilities for a in streamed]), np.array([a.label for a in streamed])
    )
    columns = [
        native.Column(name=name, numbers=_numbers(values))
        if name in NUMERIC
        else native.Column(name=name, texts=values)
        for name, values in ROWS.items()
    ]
    batch = predictor.PredictBatch(
        native.PredictBatchRequest(model_name="penguins", columns=columns)
    )
    assert batch.num_examples == N
    _assert_expected(np.array(batch.probabilities).reshape(N, -1), np.array(batch.labels))


def test_metadata_lists_each_column(inference, predictor, server: Server) -> None:
    metadata = inference.ModelMetadata(pb.ModelMetadataRequest(name="penguins"))
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        ("bill_length_mm", "FP32", [-1, 1]),
        ("island", "BYTES", [-1, 1]),
        ("body_mass_g", "FP32", [-1, 1]),
        ("sex", "BYTES", [-1, 1]),
    ]
    config = inference.ModelConfig(pb.ModelConfigRequest(name="penguins")).config
    assert [(i.name, list(i.dims)) for i in config.input] == [
        ("bill_length_mm", [-1, 1]), ("island", [-1, 1]),
        ("body_mass_g", [-1, 1]), ("sex", [-1, 1]),
    ]  # fmt: skip
    rest = _get(server, "/v2/models/penguins")
    assert [i["datatype"] for i in rest["inputs"]] == ["FP32", "BYTES", "FP32", "BYTES"]
    info = predictor.ModelInfo(native.ModelInfoRequest(model_name="penguins"))
    island = {c.name: c for c in info.columns}["island"]
    assert (island.kind, island.datatype, list(island.levels)) == (
        "categorical", "BYTES", ["Biscoe", "Dream", "Torgersen"],
    )  # fmt: skip
    assert (island.level_count, island.has_other, island.has_missing) == (3, True, False)
    assert {c.name: c.kind for c in info.columns}["body_mass_g"] == "numeric"


def test_unseen_levels_and_missing_cells_are_counted(inference, metrics: ServerMetrics) -> None:
    def count(metric: str, column: str) -> float:
        value = metrics.registry.get_sample_value(metric, {"model": "penguins", "column": column})
        return value or 0.0

    before = {c: count("bnserve_unseen_levels_total", c) for c in ("island", "sex")}
    missing_before = count("bnserve_missing_cells_total", "sex")
    inference.ModelInfer(_typed_request())
    unseen = {c: sum(1 for v in ROWS[c] if v == UNSEEN) for c in ("island", "sex")}
    assert unseen["island"] > 0
    for column in ("island", "sex"):
        assert count("bnserve_unseen_levels_total", column) - before[column] == unseen[column]
    assert count("bnserve_missing_cells_total", "sex") - missing_before == ROWS["sex"].count("")


# --- one refusal per bad input, naming the column -----------------------------------------

BAD_V2 = {
    "missing column": ({"sex": None}, "'sex'"),
    "unknown column": ({"flipper_length_mm": ("FP32", [N, 1], [1.0] * N)}, "'flipper_length_mm'"),
    "BYTES in a numeric column": (
        {"bill_length_mm": ("BYTES", [N, 1], ["x"] * N)},
        "'bill_length_mm' is a numeric column",
    ),
    "a number where BYTES was expected": (
        {"island": ("FP32", [N, 1], [1.0] * N)},
        "'island' is a categorical column",
    ),
    "a wrong shape": ({"island": ("BYTES", [N, 2], ROWS["island"] * 2)}, "'island' has shape"),
    "an inconsistent N": ({"sex": ("BYTES", [N - 1, 1], ROWS["sex"][:-1])}, "'sex' has"),
    "too few values for the shape": ({"sex": ("BYTES", [N, 1], ROWS["sex"][:-1])}, "'sex' has"),
}


@pytest.mark.parametrize("case", BAD_V2, ids=list(BAD_V2))
def test_v2_grpc_refusals_name_the_column(inference, case: str) -> None:
    changes, named = BAD_V2[case]
    with pytest.raises(grpc.RpcError) as error:
        inference.ModelInfer(_typed_request(**changes))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.value.details(), error.value.details()


BAD_JSON = {
    "text in a numeric column": ("bill_length_mm", "abc", "'bill_length_mm' is a numeric column"),
    "a number where BYTES was expected": ("island", 3, "'island' is a categorical column"),
    "infinity in a numeric column": ("body_mass_g", 1e400, "'body_mass_g'"),
}


@pytest.mark.parametrize("case", BAD_JSON, ids=list(BAD_JSON))
def test_rest_json_refusals_name_the_column(server: Server, case: str) -> None:
    column, value, named = BAD_JSON[case]
    inputs = _json_inputs()
    for tensor in inputs:
        if tensor["name"] == column:
            tensor["data"] = [value, *tensor["data"][1:]]
    status, answer = _post(server, "/v2/models/penguins/infer", {"inputs": inputs})
    assert status == 400
    assert named in answer["error"], answer


def test_native_refusals_name_the_column(predictor) -> None:
    values = native_values(ROWS, 0)
    values["body_mass_g"] = native.Value(text="heavy")
    with pytest.raises(grpc.RpcError) as error:
        predictor.Predict(native.PredictRequest(model_name="penguins", values=values))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'body_mass_g' is numeric" in error.value.details()
    values = native_values(ROWS, 0)
    del values["sex"]
    with pytest.raises(grpc.RpcError) as error:
        predictor.Predict(native.PredictRequest(model_name="penguins", values=values))
    assert "'sex'" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        predictor.Predict(native.PredictRequest(model_name="penguins", features=[1.0] * 4))
    assert "one input per column" in error.value.details()
    columns = [native.Column(name="island", texts=["Dream"])]
    with pytest.raises(grpc.RpcError) as error:
        predictor.PredictBatch(native.PredictBatchRequest(model_name="penguins", columns=columns))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'bill_length_mm'" in error.value.details()


# --- the model itself: batching and the parity gate ---------------------------------------


def _columns(model: Model) -> Columns:
    rows = model.reference_rows
    assert isinstance(rows, Columns)
    return rows


def test_an_example_scores_the_same_in_any_batch(model_path: Path) -> None:
    model = Model.load(model_path, "penguins", "1", SessionThreads())
    rows = _columns(model)
    together = model.predict(rows)[0]
    alone = np.concatenate([model.predict(take(rows, i, i + 1))[0] for i in range(N)])
    shuffled = concatenate([take(rows, i, i + 1) for i in reversed(range(N))])
    backwards = model.predict(shuffled)[0][::-1]
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(backwards, alone, atol=1e-6)


def test_parity_gate_refuses_tampered_reference_outputs(tmp_path: Path) -> None:
    path = write_mixed_model(tmp_path / "tampered.onnx", tamper=True)
    model = Model.load(path, "penguins", "1", SessionThreads())
    with pytest.raises(ModelLoadError, match="parity gate failed"):
        model.check_parity()
    good = Model.load(write_mixed_model(tmp_path / "good.onnx"), "penguins", "1", SessionThreads())
    good.check_parity()


def test_a_graph_whose_inputs_differ_from_the_schema_is_refused(tmp_path: Path) -> None:
    import onnx

    from tests.support.mixed_model import build_mixed_model

    model, _, _ = build_mixed_model()
    props = {p.key: p.value for p in model.metadata_props}
    schema = json.loads(props["bnserve.schema"])
    schema["inputs"][1]["kind"] = "numeric"
    for column in schema["columns"]:
        if column["name"] == "island":
            column["kind"] = "numeric"
    onnx.helper.set_model_props(model, {**props, "bnserve.schema": json.dumps(schema)})
    path = tmp_path / "mismatch.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="'island'"):
        Model.load(path, "penguins", "1", SessionThreads())
