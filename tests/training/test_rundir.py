"""load_run validation (each problem names its file), atomic writes, checkpoint bookkeeping."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bnserve import atomic
from bnserve.training import model, rundir
from bnserve.training.config import TrainConfig
from bnserve.training.errors import RunError
from bnserve.training.rundir import load_run
from bnserve.training.train import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rundir") / "run"
    train(TrainConfig(hidden=(8,), epochs=2), run_dir, progress=False, plot=False)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    return copy


def test_load_run_returns_everything_the_contract_names(finished_run):
    run = load_run(finished_run)
    assert run.config.hidden == (8,)
    assert run.meta["status"] == "finished"
    assert run.params["hidden1.W"].shape == (64, 8)
    assert run.heldout_x.shape[1] == 64 and len(run.heldout_y) == len(run.heldout_x)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(RunError, match=f"{tmp_path / 'nowhere'}: does not exist"):
        load_run(tmp_path / "nowhere")


def test_an_unfinished_run_is_refused(run_copy):
    meta = json.loads((run_copy / "meta.json").read_text())
    (run_copy / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    with pytest.raises(RunError, match=r"meta.json: status is 'running', not 'finished'"):
        load_run(run_copy)


def test_changed_parameters_fail_the_sha256_check(run_copy):
    params = rundir.read_npz(run_copy / "params.npz")
    params["output.b"] = params["output.b"] + 1.0
    np.savez(run_copy / "params.npz", **params)
    with pytest.raises(RunError, match=r"params.npz: sha256 .* differs from meta.json's"):
        load_run(run_copy)


def test_missing_arrays_are_listed(run_copy):
    params = rundir.read_npz(run_copy / "params.npz")
    del params["hidden1.running_var"]
    rundir.write_npz(run_copy / "params.npz", params)
    meta = json.loads((run_copy / "meta.json").read_text())
    meta["params_sha256"] = rundir.sha256_of(run_copy / "params.npz")
    (run_copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match=r"params.npz: missing arrays \['hidden1.running_var'\]"):
        load_run(run_copy)


def _rewrite_params(run_copy, params):
    rundir.write_npz(run_copy / "params.npz", params)
    meta = json.loads((run_copy / "meta.json").read_text())
    meta["params_sha256"] = rundir.sha256_of(run_copy / "params.npz")
    (run_copy / "meta.json").write_text(json.dumps(meta))


def test_a_finished_run_holds_exactly_the_param_shapes_layout(finished_run):
    run = load_run(finished_run)
    sizes = [run.heldout_x.shape[1], *run.config.hidden, len(run.meta["class_names"])]
    expected = model.param_shapes(sizes, batchnorm=True, task="classification")
    assert {name: value.shape for name, value in run.params.items()} == expected


def test_an_array_of_the_wrong_shape_is_named_with_the_shape_expected(run_copy):
    params = rundir.read_npz(run_copy / "params.npz")
    params["hidden1.beta"] = params["hidden1.beta"][:-1]
    _rewrite_params(run_copy, params)
    width = params["hidden1.W"].shape[1]
    with pytest.raises(
        RunError,
        match=rf"params.npz: hidden1.beta has shape \({width - 1},\), expected \({width},\)",
    ):
        load_run(run_copy)


def test_weights_that_do_not_chain_are_named(run_copy):
    params = rundir.read_npz(run_copy / "params.npz")
    params["output.W"] = params["output.W"][:-1]
    _rewrite_params(run_copy, params)
    with pytest.raises(
        RunError, match=r"params.npz: output.W has shape \(7, \d+\), expected \(8, "
    ):
        load_run(run_copy)


def test_broken_json_and_missing_files_are_named(run_copy):
    (run_copy / "config.json").write_text("{not json")
    with pytest.raises(RunError, match=r"config.json: not readable JSON"):
        load_run(run_copy)
    (run_copy / "meta.json").unlink()
    with pytest.raises(RunError, match=r"meta.json: missing"):
        load_run(run_copy)


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "arrays.npz"
    rundir.write_npz(target, {"a": np.arange(3)})
    before = target.read_bytes()
    with pytest.raises(TypeError, match="dtype object"):
        rundir.write_npz(target, {"a": np.array([{}], dtype=object)})

    def failing_writer(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(target, failing_writer)
    assert target.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["arrays.npz"]


def test_a_checkpoint_without_its_json_does_not_count(run_copy):
    assert rundir.checkpoint_epochs(run_copy) == [1, 2]
    rundir.checkpoint_paths(run_copy, 2)[1].unlink()  # killed between the npz and the json
    assert rundir.checkpoint_epochs(run_copy) == [1]


def test_a_corrupted_checkpoint_is_detected(run_copy):
    arrays_path = rundir.checkpoint_paths(run_copy, 1)[0]
    arrays_path.write_bytes(arrays_path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(RunError, match=r"epoch-0001.npz: contents differ from the sha256"):
        rundir.load_checkpoint(run_copy, 1)
