"""--input-scaling robust exported: Sub(median)/Div(scale) and the smooth clip (Div, Mul, Add,
Sqrt, Div) before the first Gemm, so the graph scores raw inputs; it equals the numpy path on
held-out rows, far outliers and missing cells, for a numbers-only model (`x`) and a mixed one
(per-column inputs); the fold check catches a missing clip; a server serves it."""

from __future__ import annotations

import json

import grpc
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from bnserve.export.adapt_cli import main as adapt_main
from bnserve.export.cli import main as export_main
from bnserve.export.exporter import build_model, run_schema
from bnserve.export.metadata import read_metadata
from bnserve.export.raw_rows import RawRows, design_of, feeds_of, special_rows
from bnserve.export.schema_rows import schema_rows
from bnserve.export.verify import check_layers, onnx_session, probe_rows, score_feeds
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as native
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.models.model import Model, SessionThreads
from bnserve.server.settings import ServerSettings
from bnserve.training.config import TrainConfig
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from bnserve.training.train import train
from tests.support.in_process import start_server

CLIP_OPS = ["Sub", "Div", "Div", "Mul", "Add", "Sqrt", "Div"]  # scale, then u/√(1 + (u/3)²)


@pytest.fixture(scope="module")
def numbers_run(tmp_path_factory):
    """A classifier on 4 numeric columns, one heavy-tailed with outliers, robust-scaled."""
    folder = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(7)
    x = np.column_stack(
        [
            rng.normal(100.0, 20.0, 400),
            rng.standard_cauchy(400),
            rng.exponential(3.0, 400),
            np.where(rng.random(400) < 0.9, 0.0, 1.0),
        ]
    )
    x[3, 1] = 1e6
    y = (x[:, 0] + 10 * np.tanh(x[:, 1]) > 100).astype(np.int64)
    np.savez(folder / "table.npz", x=x, y=y)
    config = TrainConfig(
        data=str(folder / "table.npz"), hidden=(16, 8), epochs=4, input_scaling="robust"
    )
    train(config, folder / "run", progress=False, plot=False)
    return load_run(folder / "run")


@pytest.fixture(scope="module")
def numbers_model(numbers_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("robust_model") / "m.onnx"
    assert export_main([str(numbers_run.path), "--out", str(out)]) == 0
    return out


def _rows_with_outliers(run):
    x = np.asarray(run.heldout_x, dtype=np.float64)
    far = np.array([[1e6, -1e6, 1e6, 1.0], [-1e6, 1e6, -1e6, 0.0], [0.0, 0.0, 0.0, 1e6]])
    return np.vstack([x, far, probe_rows(x)]).astype(np.float32)


def test_the_graph_scales_and_clips_before_the_first_gemm_and_has_no_batch_norm(numbers_model):
    graph = onnx.load(str(numbers_model)).graph
    ops = [node.op_type for node in graph.node]
    assert ops[: len(CLIP_OPS) + 1] == [*CLIP_OPS, "Gemm"]
    assert "BatchNormalization" not in ops
    assert graph.node[0].input[0] == "x" and graph.node[len(CLIP_OPS)].input[0] == "input.clipped"


@pytest.mark.parametrize("unfolded", [False, True])
def test_the_graph_equals_the_numpy_path_with_far_outliers(numbers_run, tmp_path, unfolded):
    out = tmp_path / "m.onnx"
    flags = ["--unfolded"] if unfolded else []
    assert export_main([str(numbers_run.path), "--out", str(out), *flags]) == 0
    session = onnxruntime.InferenceSession(str(out))
    x = _rows_with_outliers(numbers_run)
    probabilities = session.run(["probabilities"], {"x": x})[0]
    expected = predict(numbers_run.params, numbers_run.meta, x.astype(np.float64))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)  # the fold tolerance
    for index in (0, len(numbers_run.heldout_x), len(numbers_run.heldout_x) + 2):
        alone = session.run(["probabilities"], {"x": x[index : index + 1]})[0]
        np.testing.assert_array_equal(alone, probabilities[index : index + 1])


def test_the_fold_check_catches_a_graph_without_the_clip(numbers_run):
    model, _ = build_model(numbers_run, unfolded=False)
    x = _rows_with_outliers(numbers_run).astype(np.float64)
    assert check_layers(model, numbers_run.params, numbers_run.meta, x).passed
    bound = next(t for t in model.graph.initializer if t.name == "input.clip_bound")
    bound.CopyFrom(numpy_helper.from_array(np.float32([1e30]), bound.name))  # clip ≈ identity
    assert not check_layers(model, numbers_run.params, numbers_run.meta, x).passed


def test_the_drift_reference_holds_the_training_mean_and_std_not_the_median(numbers_model):
    drift = json.loads(read_metadata(onnx.load(str(numbers_model)))["bnserve.drift"])
    features = drift["features"]
    assert drift["source"] == "training split"
    # feature 0 ~ N(100, 20): its mean and std, where the median/quartile range would differ
    assert features["mean"][0] == pytest.approx(100.0, abs=4.0)
    assert features["std"][0] == pytest.approx(20.0, rel=0.15)
    assert features["std"][3] == pytest.approx(0.3, abs=0.1)  # not the half-range 0.5


def test_a_robust_model_is_served_and_answers_as_the_numpy_path(numbers_run, numbers_model):
    served = Model.load(numbers_model, "robust", "1", SessionThreads(1, 1))
    served.check_parity()  # the server's parity gate on the file's reference rows
    server = start_server(ServerSettings(workers=4, max_inflight=2), {"robust": numbers_model})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            row = [1e6, -3.0, 2.0, 0.0]  # a far outlier in the first column
            answer = stub.Predict(native.PredictRequest(model_name="robust", features=row))
    finally:
        server.stop(0)
    expected = predict(numbers_run.params, numbers_run.meta, np.array([row]))[0]
    np.testing.assert_allclose(answer.probabilities, expected, atol=1e-5)


def test_an_ensemble_of_runs_with_one_robust_scaling_shares_one_clip(numbers_run, tmp_path):
    other = tmp_path / "other"  # another seed, the same split: the same median and scale
    config = numbers_run.config.replace(seed=1, split_seed=0, hidden=(8,))
    train(config, other, progress=False, plot=False)
    out = tmp_path / "e.onnx"
    assert export_main([str(numbers_run.path), str(other), "--out", str(out)]) == 0
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert ops[: len(CLIP_OPS) + 1] == [*CLIP_OPS, "Gemm"] and ops.count("Sqrt") == 1
    x = _rows_with_outliers(numbers_run)
    runs = [numbers_run, load_run(other)]
    expected = np.mean([predict(r.params, r.meta, x.astype(np.float64)) for r in runs], axis=0)
    got = onnxruntime.InferenceSession(str(out)).run(["probabilities"], {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"input_scaling": "standard"}, "its input scaling differs from"),
        ({"split_seed": 5}, "its robust scaling (median, quartile scale) differs from"),
    ],
)
def test_an_ensemble_mixing_scalings_is_refused_in_one_line(
    numbers_run, tmp_path, capsys, changes, fragment
):
    other = tmp_path / "other"
    train(numbers_run.config.replace(epochs=1, **changes), other, progress=False, plot=False)
    code = export_main([str(numbers_run.path), str(other), "--out", str(tmp_path / "e.onnx")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1, error
    assert error[0].startswith("bnserve export: error:") and fragment in error[0]
    assert not (tmp_path / "e.onnx").exists()


def test_a_mixed_table_fills_then_scales_and_clips_in_the_graph(tmp_path):
    rng = np.random.default_rng(3)
    lines = ["colour,size,weight,y"]
    for row in range(240):
        colour = "" if row % 17 == 0 else ["red", "green", "blue"][row % 3]
        size = "NA" if row % 11 == 0 else f"{rng.lognormal(3, 1):.3f}"
        weight = f"{rng.normal(70, 10):.2f}"
        lines.append(f"{colour},{size},{weight},{int(row % 3 == 0 or float(weight) > 75)}")
    data = tmp_path / "mixed.csv"
    data.write_text("\n".join(lines) + "\n")
    config = TrainConfig(data=str(data), hidden=(8,), epochs=3, input_scaling="robust")
    train(config, tmp_path / "run", progress=False, plot=False, cache_dir="off")
    out = tmp_path / "mixed.onnx"
    assert export_main([str(tmp_path / "run"), "--out", str(out)]) == 0
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["colour", "size", "weight"]
    ops = [node.op_type for node in model.graph.node]
    assert {"Sqrt", "LabelEncoder", "IsNaN", "Where"} <= set(ops)
    assert "BatchNormalization" not in ops
    run, schema = load_run(tmp_path / "run"), run_schema(tmp_path / "run")
    assert schema is not None
    far = RawRows(
        {
            "colour": np.array(["red", "", "blue", "violet"], dtype=object),
            "size": np.array([1e6, np.nan, -1e6, np.nan]),
            "weight": np.array([np.nan, 1e6, 70.0, -1e6]),
        }
    )
    records = RawRows.concat([schema_rows(run, schema).heldout, special_rows(schema), far])
    expected = predict(run.params, run.meta, design_of(schema, records))
    got = score_feeds(onnx_session(out.read_bytes()), feeds_of(schema, records))
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
    session = onnx_session(out.read_bytes())
    last = len(records) - 1
    alone = score_feeds(session, feeds_of(schema, far.take(np.array([3]))))
    np.testing.assert_array_equal(alone["probabilities"], got["probabilities"][last : last + 1])


def test_adapt_refuses_a_robust_model_in_one_line(numbers_model, tmp_path, capsys):
    data = tmp_path / "recent.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(50, 4)))
    out = tmp_path / "a.onnx"
    code = adapt_main([str(numbers_model), "--data", str(data), "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert error.startswith("bnserve adapt: error:") and not out.exists()
