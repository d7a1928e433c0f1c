"""Model loading: graph hash scan, metadata checks, signature checks, parity gate, input checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from bnserve.server.modelfile.contract import Tolerance
from bnserve.server.modelfile.wire import WireFormatError, field_bytes, graph_sha256
from bnserve.server.models.model import Model, ModelLimits, SessionThreads
from bnserve.server.plane.errors import InvalidInput, ModelLoadError
from tests.support.model_builder import (
    CLASS_NAMES,
    NUM_FEATURES,
    MlpWeights,
    ModelFiles,
    build_model,
)

THREADS = SessionThreads(1, 1)


def _write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_scanner_agrees_with_onnx_graph_bytes() -> None:
    model, _ = build_model("regression", seed=4)
    data = model.SerializeToString()
    assert graph_sha256(data) == hashlib.sha256(model.graph.SerializeToString()).hexdigest()
    assert field_bytes(data, 7) == [model.graph.SerializeToString()]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x3a\xff\xff\x03abc", "past the end"),
        (b"\x08", "truncated varint"),
        (b"\x0f\x00", "unsupported wire type 7"),
        (b"\x08\x01", "found 0"),
    ],
)
def test_scanner_rejects_malformed_bytes(data: bytes, problem: str) -> None:
    with pytest.raises(WireFormatError, match=problem):
        graph_sha256(data)


def test_load_reports_problems_with_the_file_name(tmp_path: Path, test_models: ModelFiles) -> None:
    with pytest.raises(ModelLoadError, match=r"missing\.onnx: cannot read it"):
        Model.load(tmp_path / "missing.onnx", "m", "1", THREADS)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx: not a well-formed ONNX file"):
        Model.load(garbage, "m", "1", THREADS)


def test_changed_weights_fail_the_graph_hash(tmp_path: Path) -> None:
    model, _ = build_model("classification", seed=5)
    weights = model.graph.initializer[0]
    array = onnx.numpy_helper.to_array(weights).copy()
    array[0, 0] += 1.0
    weights.CopyFrom(onnx.numpy_helper.from_array(array, weights.name))
    path = _write(model, tmp_path / "tampered.onnx")
    with pytest.raises(ModelLoadError, match="changed after export") as raised:
        Model.load(path, "m", "1", THREADS)
    assert "tampered.onnx" in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("bnserve.format", "3", "this server reads formats ['1', '2']"),
        ("bnserve.task", "ranking", "expected one of classification, regression"),
        ("bnserve.feature_names", '["a", "a", "b", "c", "d", "e"]', "lists a name twice"),
        ("bnserve.feature_names", "[1, 2]", "not a non-empty JSON list of strings"),
        ("bnserve.reference_inputs", "[[1, 2]]", "expected (R ≥ 1, 6)"),
        ("bnserve.reference_tolerance", "{}", 'with "abs"'),
        ("bnserve.class_names", "not json", "not valid JSON"),
    ],
)
def test_bad_metadata_is_named(tmp_path: Path, key: str, value: str, problem: str) -> None:
    model, _ = build_model("classification", seed=6)
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    path = _write(model, tmp_path / "meta.onnx")
    with pytest.raises(ModelLoadError) as raised:
        Model.load(path, "m", "1", THREADS)
    assert f"metadata {key}" in str(raised.value)
    assert problem in str(raised.value)


def test_missing_metadata_key_is_named(tmp_path: Path) -> None:
    model, _ = build_model("regression", seed=6)
    kept = [p for p in model.metadata_props if p.key != "bnserve.graph_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    path = _write(model, tmp_path / "nohash.onnx")
    with pytest.raises(ModelLoadError, match=r"bnserve\.graph_sha256 is missing"):
        Model.load(path, "m", "1", THREADS)


def test_parity_gate_passes_and_fails(test_models: ModelFiles) -> None:
    good = Model.load(test_models.classification, "iris", "1", THREADS)
    good.check_parity()
    bad = Model.load(test_models.bad_parity, "bad", "1", THREADS)
    with pytest.raises(ModelLoadError, match="parity gate failed") as raised:
        bad.check_parity()
    assert "bad_parity.onnx" in str(raised.value)


def test_regression_parity_uses_relative_tolerance(tmp_path: Path) -> None:
    model, _ = build_model("regression", seed=8)
    props = {p.key: p for p in model.metadata_props}
    reference = json.loads(props["bnserve.reference_outputs"].value)
    reference["y"][0][0] *= 1.0 + 5e-5  # inside rel 1e-4
    props["bnserve.reference_outputs"].value = json.dumps(reference)
    Model.load(_write(model, tmp_path / "near.onnx"), "m", "1", THREADS).check_parity()
    reference["y"][0][0] *= 1.0 + 1e-3  # outside
    props["bnserve.reference_outputs"].value = json.dumps(reference)
    far = Model.load(_write(model, tmp_path / "far.onnx"), "m", "1", THREADS)
    with pytest.raises(ModelLoadError, match=r"y\[0, 0\]"):
        far.check_parity()


def test_check_features_messages(test_models: ModelFiles) -> None:
    model = Model.load(test_models.classification, "iris", "1", THREADS)
    model.check_features(np.zeros((3, NUM_FEATURES), np.float32))
    with pytest.raises(InvalidInput, match="empty request"):
        model.check_features(np.zeros((0, NUM_FEATURES), np.float32))
    with pytest.raises(InvalidInput, match="takes 6 features per example"):
        model.check_features(np.zeros((1, 4), np.float32))
    x = np.zeros((2, NUM_FEATURES), np.float32)
    x[1, 3] = np.inf
    with pytest.raises(InvalidInput, match=r"example 1, feature 3 \('f3'\) is inf"):
        model.check_features(x)


def test_answers_do_not_depend_on_batch_mates(test_models: ModelFiles) -> None:
    model = Model.load(test_models.classification, "iris", "1", THREADS)
    x = np.random.default_rng(3).normal(0, 2, (64, NUM_FEATURES)).astype(np.float32)
    together = model.predict(x)[0]
    alone = np.concatenate([model.predict(x[i : i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-7)


def _with_tolerance(model, tolerance: dict) -> None:
    props = {p.key: p for p in model.metadata_props}
    props["bnserve.reference_tolerance"].value = json.dumps(tolerance)


def test_a_model_stating_a_loose_tolerance_is_refused_whatever_its_rows(tmp_path: Path) -> None:
    # The attack: weights edited (here: reference rows from other weights), the graph hash left
    # valid, and the stated tolerance raised until the edited model passes its own gate.
    other = MlpWeights.random(len(CLASS_NAMES), seed=77)
    model, _ = build_model("classification", seed=3, reference_weights=other)
    _with_tolerance(model, {"abs": 10})
    loose = Model.load(_write(model, tmp_path / "loose.onnx"), "m", "1", THREADS)
    loose.check_parity(Tolerance(abs=10, rel=0.0))  # its own gate, trusted, lets it through
    with pytest.raises(ModelLoadError, match=r"reference_tolerance \(abs 10, rel 0\) is looser"):
        loose.check_parity()  # the server's default ceiling


def test_the_ceiling_scales_with_regression_outputs_and_bounds_rel(tmp_path: Path) -> None:
    model, _ = build_model("regression", seed=8)
    reference = json.loads(
        {p.key: p for p in model.metadata_props}["bnserve.reference_outputs"].value
    )
    scale = float(np.max(np.abs(reference["y"])))
    _with_tolerance(model, {"abs": 0.5 * 1e-3 * scale, "rel": 1e-4})
    Model.load(_write(model, tmp_path / "ok.onnx"), "m", "1", THREADS).check_parity()
    _with_tolerance(model, {"abs": 1e-6, "rel": 0.01})
    too_relative = Model.load(_write(model, tmp_path / "rel.onnx"), "m", "1", THREADS)
    with pytest.raises(ModelLoadError, match=r"rel ≤ 0.001"):
        too_relative.check_parity()


def _node_heavy_model(nodes: int) -> onnx.ModelProto:
    """A valid model with `nodes` extra Identity nodes chained before its output."""
    model, _ = build_model("classification", seed=4)
    graph = model.graph
    last = graph.output[0].name
    renamed = f"{last}_inner"
    for node in graph.node:
        node.output[:] = [renamed if name == last else name for name in node.output]
    previous = renamed
    for index in range(nodes):
        output = last if index == nodes - 1 else f"{renamed}_{index}"
        graph.node.append(onnx.helper.make_node("Identity", [previous], [output]))
        previous = output
    return model


def test_a_model_past_the_node_or_byte_limit_is_refused_before_onnxruntime(tmp_path: Path):
    path = _write(_node_heavy_model(50), tmp_path / "many.onnx")
    with pytest.raises(ModelLoadError, match=r"many\.onnx: \d+ graph nodes, more than .*\(20,"):
        Model.load(path, "m", "1", THREADS, ModelLimits(max_nodes=20))
    size = path.stat().st_size
    with pytest.raises(ModelLoadError, match=rf"{size:,} bytes, more than this server loads"):
        Model.load(path, "m", "1", THREADS, ModelLimits(max_bytes=size - 1))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_predict_answers_exactly_what_inference_session_run_does(
    test_models: ModelFiles, task: str
) -> None:
    path = test_models.classification if task == "classification" else test_models.regression
    model = Model.load(path, "m", "1", THREADS)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for rows in (1, 2, 64):
        x = rng.normal(0, 2, (rows, NUM_FEATURES)).astype(np.float32)
        served = model.predict(x)
        expected = session.run(list(model.output_names), {"x": x})
        assert [a.dtype for a in served] == [a.dtype for a in expected]
        for got, want in zip(served, expected, strict=True):
            np.testing.assert_array_equal(got, want)
        assert not np.shares_memory(model.predict(x)[0], served[0])  # each call its own arrays


def test_predict_still_rejects_what_onnxruntime_rejects(test_models: ModelFiles) -> None:
    model = Model.load(test_models.classification, "iris", "1", THREADS)
    with pytest.raises(InvalidArgument, match="Unexpected input data type"):
        model.predict(np.zeros((1, NUM_FEATURES), np.float64))
