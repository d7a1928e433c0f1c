"""The exported file's metadata_props: every contract key, a hash the server can recompute, and
reference rows any runtime can reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bnserve.export.exporter import ExportSettings, export_run
from bnserve.export.metadata import epsilon_text, graph_sha256, read_metadata
from bnserve.export.verify import onnx_session, probe_rows, score_onnx
from bnserve.server.modelfile.wire import graph_sha256 as server_graph_sha256
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run

COMMON_KEYS = {
    "bnserve.format",
    "bnserve.task",
    "bnserve.feature_names",
    "bnserve.stats",
    "bnserve.bn_momentum",
    "bnserve.running_var",
    "bnserve.epsilon",
    "bnserve.folded",
    "bnserve.fold_max_abs_error",
    "bnserve.run_id",
    "bnserve.params_sha256",
    "bnserve.graph_sha256",
    "bnserve.reference_inputs",
    "bnserve.reference_outputs",
    "bnserve.reference_tolerance",
    "bnserve.training",
    "bnserve.created_at",
    "bnserve.drift",
}


def _export(run_dir: Path, out: Path, **settings: object) -> dict[str, str]:
    export_run(ExportSettings(run_dir=run_dir, out=out, **settings))  # type: ignore[arg-type]
    return read_metadata(onnx.load(str(out)))


def test_classification_metadata_has_every_contract_key(synthetic_run, tmp_path) -> None:
    run_dir = synthetic_run(outputs=4)
    metadata = _export(run_dir, tmp_path / "model.onnx")
    meta = json.loads((run_dir / "meta.json").read_text())

    assert set(metadata) == COMMON_KEYS | {"bnserve.class_names"}
    assert metadata["bnserve.format"] == "1"
    assert metadata["bnserve.task"] == "classification"
    assert json.loads(metadata["bnserve.feature_names"]) == meta["feature_names"]
    assert json.loads(metadata["bnserve.class_names"]) == meta["class_names"]
    assert metadata["bnserve.stats"] == "ema"
    assert float(metadata["bnserve.bn_momentum"]) == 0.1
    assert metadata["bnserve.running_var"] == "unbiased"
    assert float(metadata["bnserve.epsilon"]) == 1e-5
    assert metadata["bnserve.folded"] == "true"
    assert metadata["bnserve.run_id"] == meta["run_id"]
    assert metadata["bnserve.params_sha256"] == meta["params_sha256"]
    assert json.loads(metadata["bnserve.reference_tolerance"]) == {"abs": 1e-5}
    training = json.loads(metadata["bnserve.training"])
    assert training["config"]["hidden"] == [16, 12]
    assert training["metrics"]["test_accuracy"] == meta["test_accuracy"]


def test_regression_and_unfolded_metadata(synthetic_run, tmp_path) -> None:
    run_dir = synthetic_run(task="regression", outputs=2, batchnorm=False)
    metadata = _export(run_dir, tmp_path / "model.onnx", unfolded=True)

    assert set(metadata) == COMMON_KEYS | {"bnserve.target_names"}
    assert json.loads(metadata["bnserve.target_names"]) == ["target_0", "target_1"]
    assert metadata["bnserve.folded"] == "false"
    assert metadata["bnserve.bn_momentum"] == ""  # no batch norm, no momentum
    target_std = load_run(run_dir).params["target.std"]
    tolerance = json.loads(metadata["bnserve.reference_tolerance"])
    assert tolerance == {"rel": 1e-4, "abs": pytest.approx(1e-4 * float(target_std.max()))}


def test_graph_sha256_agrees_with_the_servers_wire_scanner(synthetic_run, tmp_path) -> None:
    # The server verifies the hash without onnx, by scanning the file for ModelProto field 7.
    out = tmp_path / "model.onnx"
    metadata = _export(synthetic_run(), out)

    assert metadata["bnserve.graph_sha256"] == server_graph_sha256(out.read_bytes())
    assert metadata["bnserve.graph_sha256"] == graph_sha256(onnx.load(str(out)))


def test_graph_sha256_changes_when_a_weight_changes(synthetic_run, tmp_path) -> None:
    out = tmp_path / "model.onnx"
    _export(synthetic_run(), out)
    model = onnx.load(str(out))
    before = graph_sha256(model)

    weight = model.graph.initializer[0]
    weight.raw_data = bytes([weight.raw_data[0] ^ 1]) + weight.raw_data[1:]

    assert graph_sha256(model) != before


def test_onnxruntime_reads_the_same_metadata(synthetic_run, tmp_path) -> None:
    out = tmp_path / "model.onnx"
    metadata = _export(synthetic_run(), out)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    assert session.get_modelmeta().custom_metadata_map == metadata


@pytest.mark.parametrize(
    "fields", [{}, {"task": "regression", "outputs": 3, "activation": "tanh"}], ids=["cls", "reg"]
)
def test_reference_rows_reproduce_in_onnxruntime(synthetic_run, tmp_path, fields) -> None:
    run_dir = synthetic_run(**fields)
    out = tmp_path / "model.onnx"
    metadata = _export(run_dir, out, reference_rows=5)
    run = load_run(run_dir)

    inputs = np.array(json.loads(metadata["bnserve.reference_inputs"]))
    expected = json.loads(metadata["bnserve.reference_outputs"])
    tolerance = json.loads(metadata["bnserve.reference_tolerance"])
    outputs = score_onnx(onnx_session(out.read_bytes()), inputs)

    assert inputs.shape == (5, run.heldout_x.shape[1])
    np.testing.assert_array_equal(inputs, inputs.astype(np.float32))  # exact float32 values
    numpy_outputs = predict(run.params, run.meta, inputs)
    main = "probabilities" if run.meta["task"] == "classification" else "y"
    np.testing.assert_array_equal(np.array(expected[main]), numpy_outputs)
    reference = np.array(expected[main])
    bound = tolerance["abs"] + tolerance.get("rel", 0.0) * np.abs(reference)
    assert np.all(np.abs(outputs[main] - reference) <= bound)
    if main == "probabilities":
        assert expected["label"] == np.argmax(numpy_outputs, axis=1).tolist()
        np.testing.assert_array_equal(outputs["label"], expected["label"])


def test_fold_max_abs_error_is_the_maximum_over_the_probe_rows(synthetic_run, tmp_path) -> None:
    run_dir = synthetic_run()
    out = tmp_path / "model.onnx"
    metadata = _export(run_dir, out)
    run = load_run(run_dir)

    probe = probe_rows(run.heldout_x).astype(np.float32)  # held-out rows, then edge rows
    outputs = score_onnx(onnx_session(out.read_bytes()), probe)
    expected = predict(run.params, run.meta, probe.astype(np.float64))

    recorded = float(metadata["bnserve.fold_max_abs_error"])
    assert 0 < recorded <= 1e-5
    assert recorded == pytest.approx(np.abs(outputs["probabilities"] - expected).max(), rel=1e-6)


def test_the_server_loads_exported_models_and_passes_their_parity_gate(
    trained_runs, synthetic_run, tmp_path
) -> None:
    from bnserve.server.models.model import Model, SessionThreads

    run_dirs = [*trained_runs.values(), synthetic_run(task="regression", outputs=3)]
    for index, run_dir in enumerate(run_dirs):
        for unfolded in (False, True):
            out = tmp_path / f"model{index}-{unfolded}.onnx"
            export_run(ExportSettings(run_dir=run_dir, out=out, unfolded=unfolded))
            model = Model.load(out, name="m", version="1", threads=SessionThreads())
            model.check_parity()  # raises ModelLoadError if the reference rows do not reproduce


def test_epsilon_text_one_value_several_or_none() -> None:
    assert epsilon_text(1e-5) == "1e-05"  # a trained run's one ε
    assert epsilon_text([1e-3, 1e-3]) == "0.001"  # an import whose nodes agree
    assert epsilon_text([1e-3, 1e-5, 1e-3]) == "[1e-05, 0.001]"  # nodes that differ, ascending
    assert epsilon_text([]) == ""  # an import without batch norm
