"""export/network.py: what a run's meta and config say the network is (`spec_from_run`), and the
parameters checked against it (`check_params`): every refusal names the file, key and unit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnserve.export.cli import main
from bnserve.export.errors import ExportError
from bnserve.export.network import NetworkSpec, check_params, spec_from_run
from bnserve.training.model import param_shapes
from bnserve.training.rundir import load_run
from tests.support.export_failure import assert_fails_cleanly


@pytest.mark.parametrize(
    ("meta_changes", "fragments"),
    [
        ({"activation": "tanh"}, ["'activation' is 'tanh' but config.json says 'relu'"]),
        ({"epsilon": 1e-3}, ["'epsilon' is 0.001 but config.json says 1e-05"]),
        ({"stats": "median"}, ["'stats' is 'median'"]),
        ({"class_names": ["only"]}, ["'class_names' has 1 entries"]),
    ],
    ids=["activation", "epsilon", "stats", "one-class"],
)
def test_meta_that_does_not_match_the_config(
    synthetic_run, out_dir, capsys, meta_changes, fragments
) -> None:
    run_dir = synthetic_run()
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, **meta_changes}))
    argv = [str(run_dir), "--out", str(out_dir / "m.onnx")]
    assert_fails_cleanly(capsys, argv, out_dir, "meta.json", *fragments)


@pytest.mark.parametrize(
    ("params_fields", "fragments"),
    [
        ({"hidden": (16, 10)}, ["'hidden2.W' has shape (16, 10)", "needs (16, 12)"]),
        ({"hidden": (16, 12, 8)}, ["unexpected hidden3.W", "hidden [16, 12]"]),
        ({"hidden": (16,)}, ["missing", "hidden2"]),
        ({"features": 5}, ["heldout.npz", "5 features"]),
        ({"batchnorm": False}, ["params.npz", "missing", "hidden1.beta"]),
    ],
    ids=["narrower-layer", "extra-layer", "missing-layer", "fewer-features", "no-bn-params"],
)
def test_params_that_do_not_match_the_config(
    synthetic_run, make_params, out_dir, capsys, params_fields, fragments
) -> None:
    run_dir = synthetic_run(params=make_params(**params_fields))
    assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out_dir / "m.onnx")], out_dir, *fragments
    )


def test_non_finite_parameter(synthetic_run, make_params, out_dir, capsys) -> None:
    params = make_params()
    params["hidden2.W"][3, 5] = np.inf
    run_dir = synthetic_run(params=params)
    assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "'hidden2.W'",
        "non-finite",
        "inf",
        "(3, 5)",
    )


def test_non_positive_running_variance_epsilon_cannot_save(
    synthetic_run, make_params, out_dir, capsys
) -> None:
    params = make_params()
    params["hidden1.running_var"][4] = -0.5
    run_dir = synthetic_run(params=params)
    assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "'hidden1.running_var' is -0.5 at unit 4",  # not np.float64(-0.5)
        "running_var + ε",
    )


def test_zero_running_variance_that_epsilon_saves_is_exported(
    synthetic_run, make_params, out_dir
) -> None:
    params = make_params()
    params["hidden1.running_var"][4] = 0.0
    params["hidden2.running_var"][2] = -1e-6  # rounding residue; ε = 1e-5 keeps σ² + ε > 0
    run_dir = synthetic_run(params=params)
    assert main([str(run_dir), "--out", str(out_dir / "m.onnx")]) == 0


def test_spec_from_run_reads_the_network_from_meta_and_config(synthetic_run) -> None:
    run = load_run(synthetic_run(task="regression", outputs=2, hidden=(16, 8), activation="tanh"))
    spec = spec_from_run(run.meta, run.config)
    assert spec == NetworkSpec(
        feature_count=6,
        hidden_sizes=(16, 8),
        output_count=2,
        activation="tanh",
        batchnorm=True,
        epsilon=1e-5,
        task="regression",
    )
    assert spec.layer_sizes == (6, 16, 8, 2)


@pytest.mark.parametrize(
    ("meta_changes", "fragment"),
    [
        ({"task": "ranking"}, "meta.json: 'task' is 'ranking'; expected one of"),
        ({"activation": "gelu"}, "meta.json: 'activation' is 'gelu'; expected one of"),
        ({"batchnorm": "yes"}, "meta.json: 'batchnorm' is 'yes'; expected true or false"),
        ({"epsilon": -1.0}, "meta.json: 'epsilon' is -1.0; expected a number ≥ 0"),
        ({"run_id": ""}, "meta.json: 'run_id' is ''; expected a string"),
        ({"feature_names": []}, "meta.json: 'feature_names' is []; expected a non-empty list"),
    ],
    ids=["task", "activation", "batchnorm", "epsilon", "run-id", "no-features"],
)
def test_spec_from_run_names_each_bad_meta_value(synthetic_run, meta_changes, fragment) -> None:
    run = load_run(synthetic_run())
    with pytest.raises(ExportError) as raised:
        spec_from_run({**run.meta, **meta_changes}, run.config)
    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    "fields",
    [{}, {"batchnorm": False}, {"task": "regression", "outputs": 2}],
    ids=["bn", "no-bn", "regression"],
)
def test_check_params_accepts_exactly_the_layout(synthetic_run, fields) -> None:
    run = load_run(synthetic_run(**fields))
    spec = spec_from_run(run.meta, run.config)
    check_params(run.params, spec)  # no error
    expected = param_shapes(spec.layer_sizes, batchnorm=spec.batchnorm, task=spec.task)
    assert {name: value.shape for name, value in run.params.items()} == expected


def test_check_params_names_an_extra_array_and_integer_dtype(synthetic_run) -> None:
    run = load_run(synthetic_run())
    spec = spec_from_run(run.meta, run.config)
    with pytest.raises(ExportError, match=r"params.npz: unexpected extra.bias; the config"):
        check_params({**run.params, "extra.bias": np.zeros(3)}, spec)
    as_int = {**run.params, "output.b": run.params["output.b"].astype(np.int64)}
    with pytest.raises(ExportError, match=r"'output.b' has dtype int64; expected floats"):
        check_params(as_int, spec)


def test_check_params_refuses_a_zero_input_std(synthetic_run) -> None:
    run = load_run(synthetic_run())
    spec = spec_from_run(run.meta, run.config)
    params = dict(run.params)
    params["input.std"] = params["input.std"].copy()
    params["input.std"][2] = 0.0
    with pytest.raises(ExportError, match=r"'input.std' is 0.0 at unit 2 .*must be > 0"):
        check_params(params, spec)
