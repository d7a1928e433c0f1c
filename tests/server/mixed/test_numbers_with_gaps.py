"""A table of numbers only with gaps: `bnserve export` keeps the single input x [N, F] (format
"2", the gaps filled inside the graph). Served, NaN / null in x means missing over v2 gRPC, REST
JSON and native Predict, ±Inf is still refused, missing cells are counted per column, and
`bnserve predict --csv` sends empty cells as missing."""

from __future__ import annotations

import csv
import http.client
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from bnserve.server.app import Server
from bnserve.server.clients.predict import main
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as native
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.settings import ServerSettings
from bnserve.training.config import TrainConfig
from tests.support.in_process import start_server

COLUMNS = ["a", "b", "c", "d"]


@dataclass(frozen=True)
class GapsExport:
    model: Path
    csv: Path
    x: np.ndarray  # (R, 4) float32 reference rows, NaN missing
    probabilities: np.ndarray
    labels: np.ndarray


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> GapsExport:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.train import train

    folder = tmp_path_factory.mktemp("gaps")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (300, 4))
    lines = [",".join([*COLUMNS, "y"])]
    for row in range(300):
        cells = ["" if rng.random() < 0.05 else f"{v:.4f}" for v in x[row]]
        lines.append(",".join([*cells, "yes" if x[row, 0] + x[row, 1] > 0 else "no"]))
    data = folder / "gaps.csv"
    data.write_text("\n".join(lines) + "\n")
    config = TrainConfig(data=str(data), target="y", hidden=(8,), epochs=5)
    train(config, folder / "run", progress=False, plot=False, cache_dir="off")
    model = export_run(ExportSettings(run_dir=folder / "run", out=folder / "gaps.onnx")).out
    metadata = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert metadata["bnserve.format"] == "2"
    reference = json.loads(metadata["bnserve.reference_inputs"])["x"]
    outputs = json.loads(metadata["bnserve.reference_outputs"])
    return GapsExport(
        model=model,
        csv=data,
        x=np.array([[np.nan if v is None else v for v in row] for row in reference], np.float32),
        probabilities=np.array(outputs["probabilities"]),
        labels=np.array(outputs["label"]),
    )


@pytest.fixture(scope="module")
def server(exported: GapsExport, metrics: ServerMetrics) -> Iterator[Server]:
    started = start_server(
        ServerSettings(workers=8, max_inflight=6),
        {"gaps": exported.model},
        http=True,
        metrics=metrics,
    )
    yield started
    started.stop(0)


def _check(exported: GapsExport, probabilities: object, labels: object) -> None:
    np.testing.assert_allclose(
        np.asarray(probabilities).reshape(len(exported.labels), -1),
        exported.probabilities,
        atol=1e-5,
    )
    assert list(labels) == exported.labels.tolist()  # type: ignore[call-overload]


def test_nan_in_x_is_missing_over_every_api(
    exported: GapsExport, server: Server, metrics: ServerMetrics
) -> None:
    assert np.isnan(exported.x).any(axis=1).sum() >= 2  # rows with gaps, one all missing
    before = metrics.registry.get_sample_value(
        "bnserve_missing_cells_total", {"model": "gaps", "column": "a"}
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request = pb.ModelInferRequest(model_name="gaps")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=list(exported.x.shape))
        tensor.contents.fp32_contents.extend(exported.x.ravel().tolist())
        response = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        _check(
            exported,
            response.outputs[0].contents.fp32_contents,
            response.outputs[1].contents.int64_contents,
        )
        stub = predictor_pb2_grpc.PredictorStub(channel)
        answers = [
            stub.Predict(native.PredictRequest(model_name="gaps", features=row.tolist()))
            for row in exported.x
        ]
        _check(exported, [a.probabilities for a in answers], [a.label for a in answers])
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(native.PredictRequest(model_name="gaps", features=[1, np.inf, 0, 0]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "('b') is inf" in error.value.details()
    after = metrics.registry.get_sample_value(
        "bnserve_missing_cells_total", {"model": "gaps", "column": "a"}
    )
    assert after - (before or 0) == 2 * int(np.isnan(exported.x[:, 0]).sum())
    data = [[None if np.isnan(v) else float(v) for v in row] for row in exported.x]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(data), 4], "data": data}]}
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", "/v2/models/gaps/infer", json.dumps(body))
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    _check(exported, outputs["probabilities"], outputs["label"])


def test_predict_csv_sends_empty_cells_as_missing(
    exported: GapsExport, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--target", f"127.0.0.1:{server.port}", "--csv", str(exported.csv), "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = list(csv.reader(io.StringIO(captured.out)))
    assert len(table) == 301
    import onnxruntime as ort

    with exported.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    x = np.array(
        [[float(row[c]) if row[c] else np.nan for c in COLUMNS] for row in rows], np.float32
    )
    session = ort.InferenceSession(str(exported.model), providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(["probabilities", "label"], {"x": x})
    served = np.array([[float(p) for p in row[3:]] for row in table[1:]])
    np.testing.assert_allclose(served, probabilities, atol=1e-6)
    assert [int(row[1]) for row in table[1:]] == labels.tolist()


def test_predict_features_sends_empty_values_as_missing(
    exported: GapsExport, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    target = f"127.0.0.1:{server.port}"
    assert main(["--target", target, "--features", "0.5,,NA,-1"]) == 0
    answer = capsys.readouterr().out
    session = ort.InferenceSession(str(exported.model), providers=["CPUExecutionProvider"])
    x = np.array([[0.5, np.nan, np.nan, -1.0]], np.float32)
    probabilities, labels = session.run(["probabilities", "label"], {"x": x})
    assert f"(label {labels[0]})" in answer
    assert f"={probabilities[0, labels[0]]:.4f}" in answer
