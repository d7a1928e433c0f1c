"""The run directory (docs/contracts.md): its files written atomically (bnserve/atomic.py),
checkpoints, and `load_run` for readers."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnserve import atomic
from bnserve.training import model
from bnserve.training.config import TrainConfig
from bnserve.training.errors import RunError

CHECKPOINT_DIR = "checkpoints"


def write_json(path: Path, value: Any) -> None:
    """Atomically write `value` as indented JSON."""
    text = json.dumps(value, indent=2, sort_keys=False) + "\n"
    atomic.write_bytes(Path(path), text.encode("utf-8"))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write arrays with np.savez (no pickle: object arrays are refused)."""
    for name, array in arrays.items():
        if array.dtype == object:
            raise TypeError(f"{path}: array {name!r} has dtype object (would need pickle)")
    atomic.write_file(Path(path), lambda handle: np.savez(handle, allow_pickle=False, **arrays))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    """Parsed JSON; RunError names the file when it is missing or broken."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: not readable JSON ({error})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, loaded without pickle; RunError names the file on failure."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except Exception as error:
        raise RunError(f"{path}: not a readable .npz without pickle ({error})") from None


@dataclass(frozen=True)
class Run:
    """A finished run as `load_run` returns it."""

    path: Path
    config: TrainConfig
    meta: dict[str, Any]
    params: dict[str, np.ndarray]
    heldout_x: np.ndarray  # (R, F) raw test-split features, float64
    heldout_y: np.ndarray  # (R,) int64 labels or (R, T) float64 targets


def load_run(path: str | os.PathLike[str]) -> Run:
    """Load and validate a finished run directory; RunError names the file and the problem."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise RunError(f"{run_dir}: does not exist (a run directory of bnserve train is needed)")
    if not run_dir.is_dir():
        raise RunError(
            f"{run_dir}: not a run directory (a run directory of bnserve train is needed)"
        )
    meta = read_json(run_dir / "meta.json")
    if not isinstance(meta, dict) or meta.get("status") != "finished":
        status = meta.get("status") if isinstance(meta, dict) else None
        raise RunError(f"{run_dir / 'meta.json'}: status is {status!r}, not 'finished'")
    try:
        config = TrainConfig.from_dict(read_json(run_dir / "config.json"))
    except ValueError as error:
        raise RunError(f"{run_dir / 'config.json'}: {error}") from None
    params_path = run_dir / "params.npz"
    actual_sha = sha256_of(params_path) if params_path.is_file() else None
    if actual_sha is None:
        raise RunError(f"{params_path}: missing")
    if actual_sha != meta.get("params_sha256"):
        raise RunError(f"{params_path}: sha256 {actual_sha} differs from meta.json's")
    params = read_npz(params_path)
    _check_params(params, meta, params_path)
    heldout = read_npz(run_dir / "heldout.npz")
    for name in ("x", "y"):
        if name not in heldout:
            raise RunError(f"{run_dir / 'heldout.npz'}: missing array {name!r}")
    n_features = params["input.mean"].shape[0]
    if heldout["x"].ndim != 2 or heldout["x"].shape[1] != n_features:
        raise RunError(
            f"{run_dir / 'heldout.npz'}: 'x' shape {heldout['x'].shape} does not match "
            f"{n_features} features"
        )
    return Run(run_dir, config, meta, params, heldout["x"], heldout["y"])


def _check_params(params: dict[str, np.ndarray], meta: dict[str, Any], path: Path) -> None:
    """Every key of the layout (`model.param_shapes`) is present and the shapes chain."""
    n_hidden = model.hidden_count(params)
    batchnorm, task = bool(meta.get("batchnorm")), str(meta.get("task"))
    placeholder_sizes = [0] * (n_hidden + 2)  # the keys do not depend on the sizes
    required = model.param_shapes(placeholder_sizes, batchnorm=batchnorm, task=task)
    missing = [name for name in required if name not in params]
    if missing:
        raise RunError(f"{path}: missing arrays {missing}")
    sizes = [params["input.mean"].shape[0]]
    for name in model.layer_names(n_hidden):
        weights = params[f"{name}.W"]
        if weights.ndim != 2:
            raise RunError(f"{path}: {name}.W has shape {weights.shape}, expected (in, out)")
        sizes.append(weights.shape[1])
    clipped = "input.clip" in params  # robust scaling (training/scaling.py)
    shapes = model.param_shapes(sizes, batchnorm=batchnorm, task=task, input_clip=clipped)
    for key, shape in shapes.items():
        if params[key].shape != shape:
            raise RunError(f"{path}: {key} has shape {params[key].shape}, expected {shape}")


# --- checkpoints: checkpoints/epoch-NNNN.npz (arrays) + epoch-NNNN.json (the commit marker) ---


def checkpoint_paths(run_dir: Path, epoch: int) -> tuple[Path, Path]:
    """(arrays .npz, state .json) paths of one epoch's checkpoint."""
    base = Path(run_dir) / CHECKPOINT_DIR / f"epoch-{epoch:04d}"
    return base.with_suffix(".npz"), base.with_suffix(".json")


def save_checkpoint(
    run_dir: Path, epoch: int, arrays: dict[str, np.ndarray], state: dict[str, Any]
) -> None:
    """Arrays first, then the JSON; a checkpoint exists only once its JSON does."""
    arrays_path, state_path = checkpoint_paths(run_dir, epoch)
    write_npz(arrays_path, arrays)
    write_json(state_path, {**state, "epoch": epoch, "arrays_sha256": sha256_of(arrays_path)})


def checkpoint_epochs(run_dir: Path) -> list[int]:
    """Epochs with a complete checkpoint, ascending."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    epochs = []
    for state_path in folder.glob("epoch-*.json"):
        epoch = int(state_path.stem.split("-")[1])
        if checkpoint_paths(run_dir, epoch)[0].is_file():
            epochs.append(epoch)
    return sorted(epochs)


def load_checkpoint(run_dir: Path, epoch: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, state) of one checkpoint, checked against the sha256 its JSON recorded."""
    arrays_path, state_path = checkpoint_paths(run_dir, epoch)
    state = read_json(state_path)
    if sha256_of(arrays_path) != state.get("arrays_sha256"):
        raise RunError(f"{arrays_path}: contents differ from the sha256 in {state_path.name}")
    return read_npz(arrays_path), state


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temp files a killed writer left behind (they were never renamed into place)."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR):
        for leftover in folder.glob(atomic.TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)


def discard_checkpoints_after(run_dir: Path, epoch: int) -> None:
    """Delete checkpoints later than `epoch` (going back with --from-epoch)."""
    for later in checkpoint_epochs(run_dir):
        if later > epoch:
            arrays_path, state_path = checkpoint_paths(run_dir, later)
            state_path.unlink()
            arrays_path.unlink()
