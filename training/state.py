"""The training state a checkpoint holds, and its round trip through checkpoints/epoch-NNNN.*."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnserve.training import optim, rundir
from bnserve.training.config import TrainConfig


@dataclass
class TrainingState:
    """Everything a checkpoint must restore for a resumed run to match an uninterrupted one."""

    params: dict[str, np.ndarray]  # learnable parameters and running statistics (float32)
    optimizer: optim.OptimizerState  # step count and per-parameter slots
    rng: np.random.Generator  # shuffling and dropout stream, restored exactly
    history: list[dict[str, Any]]  # one record per completed epoch
    epoch: int  # epochs completed
    settings_since_epoch: int  # first epoch run under the current settings (lr decay restarts)


def save_checkpoint(run_dir: Path, state: TrainingState, config: TrainConfig) -> None:
    """Write checkpoint `state.epoch`: arrays "param:NAME", "opt:SLOT:NAME"; the rest as JSON."""
    arrays = {f"param:{name}": array for name, array in state.params.items()}
    for param_name, slots in state.optimizer.slots.items():
        for slot_name, array in slots.items():
            arrays[f"opt:{slot_name}:{param_name}"] = array
    rundir.save_checkpoint(
        run_dir,
        state.epoch,
        arrays,
        {
            "config": config.to_dict(),
            "optimizer_step": state.optimizer.step,
            "rng": state.rng.bit_generator.state,
            "settings_since_epoch": state.settings_since_epoch,
            "history": state.history,
        },
    )


def load_state(run_dir: Path, epoch: int) -> tuple[TrainingState, TrainConfig]:
    """The state saved at `epoch` and the config it was trained under."""
    arrays, saved = rundir.load_checkpoint(run_dir, epoch)
    params = {}
    optimizer = optim.OptimizerState(step=int(saved["optimizer_step"]))
    for key, value in arrays.items():
        kind, name = key.split(":", 1)
        if kind == "param":
            params[name] = value
        else:
            slot_name, param_name = name.split(":", 1)
            optimizer.slots.setdefault(param_name, {})[slot_name] = value
    rng = np.random.default_rng()
    rng.bit_generator.state = saved["rng"]
    state = TrainingState(
        params, optimizer, rng, list(saved["history"]), epoch, int(saved["settings_since_epoch"])
    )
    return state, TrainConfig.from_dict(saved["config"])
