"""The ONNX graphs: structure, and outputs equal to the numpy inference path in two runtimes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from bnserve.export.exporter import build_model
from bnserve.export.graph import OPSET
from bnserve.export.verify import compare_outputs, onnx_session, score_onnx
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run

NETWORKS = [
    pytest.param({"hidden": (5,)}, id="shallow-relu-bn"),
    pytest.param({"hidden": (64, 32, 32, 16, 8), "activation": "tanh"}, id="deep-tanh-bn"),
    pytest.param({"hidden": (12, 12), "activation": "sigmoid"}, id="sigmoid-bn"),
    pytest.param({"hidden": (12, 12), "batchnorm": False}, id="no-bn"),
    pytest.param({"hidden": (4,), "outputs": 2}, id="binary"),
    pytest.param({"task": "regression", "outputs": 3, "hidden": (16, 8)}, id="regression-T3-bn"),
    pytest.param(
        {"task": "regression", "outputs": 2, "hidden": (32, 32, 32), "batchnorm": False},
        id="regression-T2-deep-no-bn",
    ),
]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _reference_evaluator_outputs(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [output.name for output in model.graph.output]
    values = ReferenceEvaluator(model).run(None, {"x": x.astype(np.float32)})
    return dict(zip(names, values, strict=True))


def test_folded_classifier_structure(synthetic_run) -> None:
    classes = 3
    model, _ = build_model(
        load_run(synthetic_run(hidden=(16, 12), outputs=classes)), unfolded=False
    )

    assert _ops(model) == ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax", "ArgMax"]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    onnx.checker.check_model(model, full_check=True)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    assert sorted(initializers) == sorted(
        f"{layer}.{part}"
        for layer in ("hidden1", "hidden2", "output")
        for part in ("weight", "bias")
    )
    assert all(tensor.data_type == onnx.TensorProto.FLOAT for tensor in initializers.values())
    graph_input = model.graph.input[0]
    assert graph_input.name == "x"
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["N", 6]
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert outputs["probabilities"].elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in outputs["probabilities"].shape.dim] == [
        "N",
        classes,
    ]
    assert outputs["label"].elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in outputs["label"].shape.dim] == ["N"]


def test_folded_regression_structure(synthetic_run) -> None:
    run = load_run(synthetic_run(task="regression", outputs=2, activation="sigmoid"))
    model, _ = build_model(run, unfolded=False)

    assert _ops(model) == ["Gemm", "Sigmoid", "Gemm", "Sigmoid", "Gemm"]
    (output,) = model.graph.output
    assert output.name == "y"
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["N", 2]


def test_unfolded_model_keeps_batchnorm_and_standardization_nodes(synthetic_run) -> None:
    model, _ = build_model(load_run(synthetic_run(task="regression")), unfolded=True)

    ops = _ops(model)
    assert ops[:2] == ["Sub", "Div"]
    assert ops.count("BatchNormalization") == 2
    assert ops[-2:] == ["Mul", "Add"]


@pytest.mark.parametrize("fields", NETWORKS)
@pytest.mark.parametrize("unfolded", [False, True], ids=["folded", "unfolded"])
def test_onnxruntime_matches_numpy_within_tolerance(synthetic_run, fields, unfolded) -> None:
    run = load_run(synthetic_run(**fields))
    model, tolerance = build_model(run, unfolded=unfolded)
    expected = predict(run.params, run.meta, run.heldout_x.astype(np.float64))

    outputs = score_onnx(onnx_session(model.SerializeToString()), run.heldout_x)
    check = compare_outputs(outputs, expected, run.meta["task"], tolerance)

    assert check.passed, check
    assert ("BatchNormalization" in _ops(model)) == (unfolded and run.meta["batchnorm"])
    if run.meta["task"] == "classification":
        np.testing.assert_array_equal(outputs["label"], np.argmax(outputs["probabilities"], axis=1))


@pytest.mark.parametrize("fields", NETWORKS)
def test_reference_evaluator_matches_numpy_within_tolerance(synthetic_run, fields) -> None:
    run = load_run(synthetic_run(heldout_rows=40, **fields))
    model, tolerance = build_model(run, unfolded=False)
    expected = predict(run.params, run.meta, run.heldout_x.astype(np.float64))

    outputs = _reference_evaluator_outputs(model, run.heldout_x)

    assert compare_outputs(outputs, expected, run.meta["task"], tolerance).passed


def test_trained_runs_match_numpy_in_onnxruntime_and_reference_evaluator(trained_runs) -> None:
    for name, run_dir in trained_runs.items():
        run = load_run(run_dir)
        expected = predict(run.params, run.meta, run.heldout_x.astype(np.float64))
        for unfolded in (False, True):
            model, tolerance = build_model(run, unfolded=unfolded)
            for runtime, outputs in (
                ("onnxruntime", score_onnx(onnx_session(model.SerializeToString()), run.heldout_x)),
                ("reference", _reference_evaluator_outputs(model, run.heldout_x)),
            ):
                check = compare_outputs(outputs, expected, run.meta["task"], tolerance)
                assert check.passed, (name, unfolded, runtime, check)


@pytest.mark.parametrize(
    "fields", [{}, {"task": "regression", "outputs": 2, "activation": "tanh"}], ids=["cls", "reg"]
)
def test_one_example_alone_equals_it_inside_a_batch_of_1000(synthetic_run, fields) -> None:
    run = load_run(synthetic_run(heldout_rows=1000, **fields))
    model, _ = build_model(run, unfolded=False)
    session = onnx_session(model.SerializeToString())

    batch = score_onnx(session, run.heldout_x)
    for row in (0, 1, 517, 999):
        alone = score_onnx(session, run.heldout_x[row : row + 1])
        for name, value in alone.items():
            # float32 rounding may differ between kernel paths for 1 and 1000 rows, nothing more
            np.testing.assert_allclose(value[0], batch[name][row], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fields", NETWORKS)
def test_unfolded_model_agrees_with_folded_model(synthetic_run, fields) -> None:
    run = load_run(synthetic_run(**fields))
    folded, tolerance = build_model(run, unfolded=False)
    unfolded, _ = build_model(run, unfolded=True)

    folded_outputs = score_onnx(onnx_session(folded.SerializeToString()), run.heldout_x)
    unfolded_outputs = score_onnx(onnx_session(unfolded.SerializeToString()), run.heldout_x)

    main = "probabilities" if run.meta["task"] == "classification" else "y"
    reference = unfolded_outputs[main].astype(np.float64)
    # Two float32 models each within the tolerance of float64 numpy: within twice it of each other.
    error = np.abs(folded_outputs[main] - reference)
    assert np.all(error <= 2 * (tolerance.abs + tolerance.rel * np.abs(reference))), error.max()
    if run.meta["task"] == "classification":
        assert np.mean(folded_outputs["label"] == unfolded_outputs["label"]) > 0.99
