"""Penguins end to end on the serving side: the model `bnserve export` wrote from the raw CSV,
served, scores its raw reference rows (held-out rows, a row of missing cells, missing tokens,
unseen levels, every level) over v2 gRPC, REST JSON, tritonclient.http (BYTES + FP32), native
Predict and PredictBatch, each answer equal to the file's reference outputs (the numpy path)
within its tolerance; unseen levels are counted."""

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
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.settings import ServerSettings
from tests.server.mixed.conftest import PenguinsExport
from tests.support.in_process import start_server
from tests.support.native_values import native_values

TOLERANCE = 1e-5  # bnserve.reference_tolerance of a classifier


@pytest.fixture(scope="module")
def server(penguins: PenguinsExport, metrics: ServerMetrics) -> Iterator[Server]:
    started = start_server(
        ServerSettings(workers=8, max_inflight=6),
        {"penguins": penguins.model},
        http=True,
        metrics=metrics,
    )
    yield started
    started.stop(0)


def _check(penguins: PenguinsExport, probabilities: Any, labels: Any) -> None:
    rows = len(penguins.labels)
    np.testing.assert_allclose(
        np.asarray(probabilities, dtype=np.float64).reshape(rows, -1),
        penguins.probabilities,
        atol=TOLERANCE,
    )
    assert list(labels) == penguins.labels.tolist()


def test_v2_grpc(penguins: PenguinsExport, channel: grpc.Channel) -> None:
    request = pb.ModelInferRequest(model_name="penguins")
    for name, values in penguins.rows.items():
        tensor = request.inputs.add(name=name, shape=[len(values), 1])
        if penguins.kinds[name] == "categorical":
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
        else:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(np.nan if v is None else v for v in values)
    response = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    _check(
        penguins,
        response.outputs[0].contents.fp32_contents,
        response.outputs[1].contents.int64_contents,
    )


def test_rest_json(penguins: PenguinsExport, server: Server) -> None:
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
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", "/v2/models/penguins/infer", json.dumps(body))
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, answer
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    _check(penguins, outputs["probabilities"], outputs["label"])


def test_tritonclient_http(penguins: PenguinsExport, server: Server) -> None:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("triton_mixed_probe.py")),
         f"127.0.0.1:{server.http_port}", "penguins", json.dumps(penguins.rows)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    for form in ("binary", "json"):
        _check(penguins, answer[form]["probabilities"], answer[form]["label"])
    assert [(i["name"], i["datatype"]) for i in answer["metadata"]["inputs"]] == [
        (name, "BYTES" if kind == "categorical" else "FP32")
        for name, kind in penguins.kinds.items()
    ]


def test_native_predict_and_predict_batch(penguins: PenguinsExport, channel: grpc.Channel) -> None:
    stub = predictor_pb2_grpc.PredictorStub(channel)
    count = len(penguins.labels)
    answers = []
    for row in range(count):
        values = native_values(penguins.rows, row)
        answers.append(stub.Predict(native.PredictRequest(model_name="penguins", values=values)))
    _check(penguins, [a.probabilities for a in answers], [a.label for a in answers])
    assert answers[0].class_name == penguins.class_names[answers[0].label]
    columns = [
        native.Column(name=name, texts=values)
        if penguins.kinds[name] == "categorical"
        else native.Column(name=name, numbers=[np.nan if v is None else v for v in values])
        for name, values in penguins.rows.items()
    ]
    batch = stub.PredictBatch(native.PredictBatchRequest(model_name="penguins", columns=columns))
    _check(penguins, batch.probabilities, batch.labels)
    info = stub.ModelInfo(native.ModelInfoRequest(model_name="penguins"))
    island = {c.name: c for c in info.columns}["island"]
    assert list(island.levels) == ["Biscoe", "Dream", "Torgersen"]
    assert [c.name for c in info.columns] == list(penguins.kinds)


def test_unseen_levels_are_counted(
    penguins: PenguinsExport, channel: grpc.Channel, metrics: ServerMetrics
) -> None:
    def unseen(column: str) -> float:
        labels = {"model": "penguins", "column": column}
        return metrics.registry.get_sample_value("bnserve_unseen_levels_total", labels) or 0.0

    before = unseen("island")
    values = {
        name: native.Value(text="Atlantis") if kind == "categorical" else native.Value(missing=True)
        for name, kind in penguins.kinds.items()
    }
    answer = native_stub(channel).Predict(
        native.PredictRequest(model_name="penguins", values=values)
    )
    assert len(answer.probabilities) == len(penguins.class_names)
    assert unseen("island") == before + 1


def native_stub(channel: grpc.Channel) -> predictor_pb2_grpc.PredictorStub:
    return predictor_pb2_grpc.PredictorStub(channel)


def test_parity_gate_refuses_the_export_with_tampered_reference_outputs(
    penguins: PenguinsExport, tmp_path: Path
) -> None:
    import onnx

    from bnserve.server.models.model import Model, SessionThreads
    from bnserve.server.plane.errors import ModelLoadError

    model = onnx.load(str(penguins.model))
    for prop in model.metadata_props:
        if prop.key == "bnserve.reference_outputs":
            outputs = json.loads(prop.value)
            outputs["probabilities"][0][0] += 0.1
            prop.value = json.dumps(outputs)
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(model.SerializeToString())
    Model.load(penguins.model, "penguins", "1", SessionThreads()).check_parity()
    loaded = Model.load(tampered, "penguins", "1", SessionThreads())
    with pytest.raises(ModelLoadError, match=r"parity gate failed.*probabilities\[0, "):
        loaded.check_parity()


def test_model_drift_of_a_format_2_model_has_its_columns(channel: grpc.Channel) -> None:
    """Column drift is served (its figures: tests/server/drift/test_columns.py)."""
    answer = native_stub(channel).ModelDrift(native.ModelDriftRequest(model_name="penguins"))
    assert answer.monitored, answer.status
    kinds = {column.name: column.kind for column in answer.life.columns}
    assert kinds == {
        "island": "categorical",
        "sex": "categorical",
        **{name: "numeric" for name in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                                        "body_mass_g", "year")},
    }  # fmt: skip
    numeric = {name for name, kind in kinds.items() if kind == "numeric"}
    assert {feature.name for feature in answer.life.features} == numeric


def test_a_served_mixed_model_feeds_its_columns_to_the_drift_monitor(
    penguins: PenguinsExport,
) -> None:
    """Every scored run observed (sample 1): the raw reference rows, twice, with the hidden
    layers from the drift session; each column's live missing rate is the rows' own."""
    from bnserve.server.drift.monitor import DriftSettings
    from bnserve.server.models.model import Model, SessionThreads

    model = Model.load(
        penguins.model, "penguins", "1", SessionThreads(), drift=DriftSettings(sample=1.0)
    )
    assert model.drift is not None and model.drift.watch_layers
    model.check_parity()  # the drift session scores raw columns too
    rows = model.reference_rows
    model.check_features(rows)
    model.predict(rows)
    model.predict(rows)
    life = model.drift.report()["life"]
    count = rows.shape[0]
    schema = model.schema
    assert schema is not None
    assert life["examples"] == 2 * count
    assert len(life["layers"]) == 2
    for column in life["columns"]:
        cells = penguins.rows[column["name"]]
        missing = sum(
            cell is None
            or (isinstance(cell, float) and np.isnan(cell))
            or (isinstance(cell, str) and (cell == "" or schema.is_missing(cell)))
            for cell in cells
        ) / len(cells)
        assert column["live_missing_rate"] == pytest.approx(missing), column["name"]
