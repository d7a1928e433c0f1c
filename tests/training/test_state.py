"""training/state.py: a checkpoint restores exactly the state it saved."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnserve.training import optim, rundir
from bnserve.training.config import TrainConfig
from bnserve.training.errors import RunError
from bnserve.training.state import TrainingState, load_state, save_checkpoint


def _state(epoch: int = 3) -> TrainingState:
    rng = np.random.default_rng(7)
    params = {
        "hidden1.W": rng.normal(size=(4, 3)).astype(np.float32),
        "hidden1.gamma": np.ones(3, dtype=np.float32),
        "hidden1.running_var": rng.uniform(0.5, 2.0, 3).astype(np.float32),
        "output.b": np.zeros(2, dtype=np.float32),
    }
    optimizer = optim.OptimizerState(step=12)
    optimizer.slot("hidden1.W", "m", params["hidden1.W"])[:] = 0.25
    optimizer.slot("hidden1.W", "v", params["hidden1.W"])[:] = 0.5
    optimizer.slot("output.b", "m", params["output.b"])[:] = -1.0
    rng.normal(size=5)  # the stream is mid-way, as after some epochs of shuffling
    history = [{"epoch": e, "cost": 1.0 / e, "lr": 1e-3} for e in range(1, epoch + 1)]
    return TrainingState(params, optimizer, rng, history, epoch, settings_since_epoch=2)


def _run_dir(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / rundir.CHECKPOINT_DIR).mkdir(parents=True)
    return run_dir


def test_a_checkpoint_restores_every_part_of_the_state(tmp_path):
    run_dir, saved = _run_dir(tmp_path), _state()
    config = TrainConfig(hidden=(3,), lr=3e-3, optimizer="adam", epochs=9)
    save_checkpoint(run_dir, saved, config)
    loaded, loaded_config = load_state(run_dir, saved.epoch)
    assert loaded_config == config
    assert set(loaded.params) == set(saved.params)
    for name, array in saved.params.items():
        assert loaded.params[name].dtype == np.float32
        np.testing.assert_array_equal(loaded.params[name], array)
    assert loaded.optimizer.step == 12
    assert {name: set(slots) for name, slots in loaded.optimizer.slots.items()} == {
        "hidden1.W": {"m", "v"},
        "output.b": {"m"},
    }
    for name, slots in saved.optimizer.slots.items():
        for slot_name, array in slots.items():
            np.testing.assert_array_equal(loaded.optimizer.slots[name][slot_name], array)
    assert loaded.history == saved.history
    assert (loaded.epoch, loaded.settings_since_epoch) == (3, 2)
    # the shuffling/dropout stream goes on exactly where it was saved
    np.testing.assert_array_equal(loaded.rng.normal(size=8), saved.rng.normal(size=8))


def test_a_checkpoint_keeps_arrays_and_state_apart(tmp_path):
    run_dir, saved = _run_dir(tmp_path), _state(epoch=1)
    save_checkpoint(run_dir, saved, TrainConfig())
    arrays_path, state_path = rundir.checkpoint_paths(run_dir, 1)
    assert set(rundir.read_npz(arrays_path)) == {
        "param:hidden1.W",
        "param:hidden1.gamma",
        "param:hidden1.running_var",
        "param:output.b",
        "opt:m:hidden1.W",
        "opt:v:hidden1.W",
        "opt:m:output.b",
    }
    stored = json.loads(state_path.read_text())
    assert stored["config"] == TrainConfig().to_dict()
    assert stored["optimizer_step"] == 12 and stored["settings_since_epoch"] == 2
    assert rundir.checkpoint_epochs(run_dir) == [1]


def test_a_checkpoint_whose_arrays_changed_is_refused(tmp_path):
    run_dir = _run_dir(tmp_path)
    save_checkpoint(run_dir, _state(epoch=2), TrainConfig())
    arrays_path, _ = rundir.checkpoint_paths(run_dir, 2)
    rundir.write_npz(arrays_path, {"param:hidden1.W": np.zeros((4, 3), dtype=np.float32)})
    with pytest.raises(RunError, match="contents differ from the sha256"):
        load_state(run_dir, 2)
