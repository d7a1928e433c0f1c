"""The training distribution in `bnserve.drift` and the optional pre-activation outputs: every
stored number against a numpy computation from the run itself."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bnserve.export.exporter import ExportSettings, build_model, export_run
from bnserve.export.fold import fold_params
from bnserve.export.graph import build_folded_model
from bnserve.export.metadata import read_metadata
from bnserve.export.network import spec_from_run
from bnserve.server.modelfile.wire import with_graph_outputs
from bnserve.training.data.loading import load_dataset, split_rows
from bnserve.training.rundir import load_run


def _drift(run_dir: Path, out: Path, **settings: object) -> dict:
    export_run(ExportSettings(run_dir=run_dir, out=out, **settings))  # type: ignore[arg-type]
    return json.loads(read_metadata(onnx.load(str(out)))["bnserve.drift"])


def _f32(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _training_split(run_dir: Path) -> np.ndarray:
    config = load_run(run_dir).config
    dataset = load_dataset(config.data)
    split = split_rows(
        len(dataset.x),
        dev_fraction=config.dev_fraction,
        test_fraction=config.test_fraction,
        seed=config.data_split_seed,
    )
    return dataset.x[split.train]


def test_features_describe_the_training_split(trained_runs, tmp_path) -> None:
    run_dir = trained_runs["digits-bn"]
    drift = _drift(run_dir, tmp_path / "model.onnx")
    params = load_run(run_dir).params
    x_train = _training_split(run_dir).astype(np.float32)
    features = drift["features"]

    assert drift["format"] == 1 and drift["source"] == "training split"
    assert drift["rows"] == x_train.shape[0]
    np.testing.assert_array_equal(_f32(features["mean"]), params["input.mean"].astype(np.float32))
    np.testing.assert_array_equal(_f32(features["std"]), params["input.std"].astype(np.float32))
    np.testing.assert_array_equal(_f32(features["min"]), x_train.min(axis=0))
    np.testing.assert_array_equal(_f32(features["max"]), x_train.max(axis=0))
    for column, edges, shares in zip(x_train.T, features["edges"], features["shares"], strict=True):
        deciles = np.unique(np.quantile(column, np.linspace(0.1, 0.9, 9)).astype(np.float32))
        np.testing.assert_array_equal(np.asarray(edges, dtype=np.float32), deciles)
        # right-closed bins: (-inf, e0], (e0, e1], ..., (e_last, inf)
        bounds = np.concatenate([[-np.inf], deciles.astype(np.float64), [np.inf]])
        counts = [((column > lo) & (column <= hi)).sum() for lo, hi in itertools.pairwise(bounds)]
        np.testing.assert_allclose(shares, np.array(counts) / column.size, atol=1e-6)
    assert len(features["edges"]) == 64


def test_a_cross_validation_folds_run_is_described_by_its_own_training_rows(tmp_path) -> None:
    """A fold run (the tuner's --cv, ensemble members) standardized on its fold's training rows,
    not the whole training split: those rows are what its drift reference describes."""
    from bnserve.training.config import TrainConfig
    from bnserve.training.data.folds import fold_split
    from bnserve.training.data.loading import load_split
    from bnserve.training.train import train

    config = TrainConfig(hidden=(8,), epochs=1, folds=3, fold=1)
    run_dir = Path(train(config, tmp_path / "fold-1", progress=False).run_dir)
    drift = _drift(run_dir, tmp_path / "model.onnx")
    dataset, split = load_split(config)
    fold = fold_split(split, dataset.y, dataset.task, 3, 1, config.data_split_seed)
    assert drift["source"] == "training split"
    assert drift["rows"] == fold.train.size < split.train.size + split.dev.size
    np.testing.assert_array_equal(
        _f32(drift["features"]["max"]), dataset.x[fold.train].max(axis=0).astype(np.float32)
    )


def test_layers_carry_the_frozen_statistics(trained_runs, tmp_path) -> None:
    run_dir = trained_runs["digits-bn"]
    params = load_run(run_dir).params
    layers = _drift(run_dir, tmp_path / "model.onnx")["layers"]

    assert [layer["name"] for layer in layers] == ["hidden1", "hidden2"]
    assert [layer["output"] for layer in layers] == ["hidden1.z", "hidden2.z"]
    for layer in layers:
        for key in ("gamma", "beta", "running_mean", "running_var"):
            expected = params[f"{layer['name']}.{key}"].astype(np.float32)
            np.testing.assert_array_equal(np.asarray(layer[key], dtype=np.float32), expected)


def test_unfolded_and_batchnorm_free_models(trained_runs, synthetic_run, tmp_path) -> None:
    unfolded = _drift(trained_runs["digits-bn"], tmp_path / "unfolded.onnx", unfolded=True)
    no_bn = _drift(trained_runs["digits-no-bn"], tmp_path / "no-bn.onnx")

    assert [layer["output"] for layer in unfolded["layers"]] == ["hidden1.z_bn", "hidden2.z_bn"]
    assert no_bn["layers"] == []  # no frozen statistics to compare hidden layers with


def test_a_run_whose_training_data_is_not_reproducible_falls_back_to_heldout(
    synthetic_run, tmp_path, capsys
) -> None:
    # A synthetic run says data="digits", but its standardization was not fitted on digits.
    run_dir = synthetic_run()
    drift = _drift(run_dir, tmp_path / "model.onnx")
    heldout = load_run(run_dir).heldout_x.astype(np.float32)

    assert drift["source"] == "held-out split"
    assert drift["rows"] == heldout.shape[0]
    np.testing.assert_array_equal(_f32(drift["features"]["max"]), heldout.max(axis=0))


def test_preactivation_outputs_are_gamma_z_hat_plus_beta(trained_runs) -> None:
    run = load_run(trained_runs["digits-bn"])
    params = {name: np.asarray(value, dtype=np.float64) for name, value in run.params.items()}
    network = fold_params(params, spec_from_run(run.meta, run.config))
    exposed = build_folded_model(network, expose_preactivations=True)
    default, _ = build_model(run, unfolded=False)
    x = run.heldout_x[:50]

    names = [output.name for output in exposed.graph.output]
    assert names == ["probabilities", "label", "hidden1.z", "hidden2.z"]
    assert [output.name for output in default.graph.output] == ["probabilities", "label"]
    outputs = ort.InferenceSession(exposed.SerializeToString()).run(
        None, {"x": x.astype(np.float32)}
    )
    a = (x - params["input.mean"]) / params["input.std"]
    for index, served in enumerate(outputs[2:], start=1):
        prefix = f"hidden{index}"
        z = a @ params[f"{prefix}.W"]
        z_hat = (z - params[f"{prefix}.running_mean"]) / np.sqrt(
            params[f"{prefix}.running_var"] + 1e-5
        )
        expected = params[f"{prefix}.gamma"] * z_hat + params[f"{prefix}.beta"]
        np.testing.assert_allclose(served, expected, atol=2e-4, rtol=1e-4)
        a = np.maximum(expected, 0.0)


def test_the_servers_wire_edit_gives_the_same_outputs_as_the_exporters_graph(
    trained_runs,
) -> None:
    # The server adds the outputs to the default file's bytes (it has no onnx package).
    run = load_run(trained_runs["digits-bn"])
    default, _ = build_model(run, unfolded=False)
    params = {name: np.asarray(value, dtype=np.float64) for name, value in run.params.items()}
    network = fold_params(params, spec_from_run(run.meta, run.config))
    exposed = build_folded_model(network, expose_preactivations=True)
    edited = with_graph_outputs(default.SerializeToString(), [("hidden1.z", 32), ("hidden2.z", 16)])
    x = {"x": run.heldout_x.astype(np.float32)}

    onnx.checker.check_model(onnx.load_from_string(edited), full_check=True)
    reference = ort.InferenceSession(exposed.SerializeToString()).run(None, x)
    for served, expected in zip(ort.InferenceSession(edited).run(None, x), reference, strict=True):
        np.testing.assert_array_equal(served, expected)
