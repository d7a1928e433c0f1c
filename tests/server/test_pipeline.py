"""Served answers equal the numpy inference path of the training run (real train + export)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.modelfile.wire import graph_sha256
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server


def _regression_npz(path: Path) -> Path:
    rng = np.random.default_rng(3)
    x = rng.normal([5.0, -200.0, 0.01], [2.0, 50.0, 0.005], size=(300, 3))
    y = np.stack([100.0 + 30.0 * np.tanh((x[:, 0] - 5) / 2), x[:, 1] / 100], axis=1)
    with path.open("wb") as handle:
        np.savez(handle, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """name → (model.onnx, training Run) for a tiny digits run and a tiny regression run."""
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.rundir import load_run
    from bnserve.training.train import train

    root = tmp_path_factory.mktemp("pipeline")
    configs = {
        "digits": TrainConfig(hidden=(32, 16), epochs=2, seed=1),
        "sales": TrainConfig(
            data=str(_regression_npz(root / "sales.npz")), hidden=(16,), epochs=3, seed=2
        ),
    }
    models = {}
    for name, config in configs.items():
        run_dir = Path(train(config, root / name, progress=False).run_dir)
        report = export_run(ExportSettings(run_dir=run_dir, out=root / f"{name}.onnx"))
        assert graph_sha256(report.out.read_bytes()) == report.graph_sha256  # scanner agrees
        models[name] = (report.out, load_run(run_dir))
    return models


@pytest.fixture(scope="module")
def pipeline_server(exported) -> Iterator[Server]:
    server = start_server(ServerSettings(), {name: path for name, (path, _) in exported.items()})
    assert server.repository.ready
    yield server
    server.stop(0)


def test_served_classification_equals_training_inference(exported, pipeline_server) -> None:
    from bnserve.training.inference import predict

    _, run = exported["digits"]
    x = run.heldout_x[:40]
    expected = predict(run.params, run.meta, x)  # float64 numpy path with frozen statistics
    with grpc.insecure_channel(f"127.0.0.1:{pipeline_server.port}") as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        info = stub.ModelInfo(pb.ModelInfoRequest(model_name="digits"))
        assert info.run_id == run.meta["run_id"]
        assert list(info.feature_names) == run.meta["feature_names"]
        one_by_one = np.array(
            [stub.Predict(pb.PredictRequest(model_name="digits", features=row)).probabilities
             for row in x]
        )  # fmt: skip
        batch = stub.PredictBatch(pb.PredictBatchRequest(model_name="digits", features=x.ravel()))
    np.testing.assert_allclose(one_by_one, expected, atol=1e-5)
    np.testing.assert_allclose(np.reshape(batch.probabilities, expected.shape), expected, atol=1e-5)
    assert list(batch.labels) == expected.argmax(axis=1).tolist()


def test_served_regression_equals_training_inference(exported, pipeline_server) -> None:
    from bnserve.training.inference import predict

    _, run = exported["sales"]
    x = run.heldout_x[:20]
    expected = predict(run.params, run.meta, x)
    with grpc.insecure_channel(f"127.0.0.1:{pipeline_server.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = v2.ModelInferRequest(
            model_name="sales", raw_input_contents=[x.astype("<f4").tobytes()]
        )
        request.inputs.add(name="x", datatype="FP32", shape=x.shape)
        response = stub.ModelInfer(request)
    served = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(expected.shape)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
