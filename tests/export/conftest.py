"""Run directories for the exporter's tests.

`write_synthetic_run` writes random but realistically scaled parameters in the run-directory
layout of docs/contracts.md (fast, and covers shapes training's defaults never produce);
`trained_runs` makes real, tiny training runs once per session.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bnserve.training.config import TrainConfig


@dataclass(frozen=True)
class SyntheticRun:
    """What to write: the network's shape and the seed of its random parameters."""

    task: str = "classification"
    hidden: tuple[int, ...] = (16, 12)
    activation: str = "relu"
    batchnorm: bool = True
    features: int = 6
    outputs: int = 3  # classes C or targets T
    heldout_rows: int = 200
    epsilon: float = 1e-5
    seed: int = 0


def synthetic_params(spec: SyntheticRun) -> dict[str, np.ndarray]:
    """Parameters (float32, as training stores them) with the scales a trained net has."""
    rng = np.random.default_rng(spec.seed)
    widths = [spec.features, *spec.hidden]
    params = {
        "input.mean": rng.normal(0.0, 5.0, spec.features),
        "input.std": rng.uniform(0.1, 10.0, spec.features),
    }
    for index, (fan_in, width) in enumerate(itertools.pairwise(widths), start=1):
        prefix = f"hidden{index}"
        params[f"{prefix}.W"] = rng.normal(0.0, 1.0 / np.sqrt(fan_in), (fan_in, width))
        if spec.batchnorm:
            params[f"{prefix}.gamma"] = rng.uniform(0.5, 1.5, width)
            params[f"{prefix}.beta"] = rng.normal(0.0, 0.3, width)
            params[f"{prefix}.running_mean"] = rng.normal(0.0, 0.5, width)
            running_var = rng.uniform(0.3, 2.0, width)
            # a nearly dead unit: tiny weights, tiny variance; 1/√(σ²+ε) ≈ 300 magnifies it
            params[f"{prefix}.W"][:, 0] *= 3e-4
            params[f"{prefix}.running_mean"][0] = 0.0
            running_var[0] = 1e-7
            params[f"{prefix}.running_var"] = running_var
        else:
            params[f"{prefix}.b"] = rng.normal(0.0, 0.3, width)
    params["output.W"] = rng.normal(0.0, 1.0 / np.sqrt(widths[-1]), (widths[-1], spec.outputs))
    params["output.b"] = rng.normal(0.0, 0.3, spec.outputs)
    if spec.task == "regression":
        params["target.mean"] = rng.normal(0.0, 50.0, spec.outputs)
        params["target.std"] = rng.uniform(0.05, 30.0, spec.outputs)
    return {name: value.astype(np.float32) for name, value in params.items()}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def write_synthetic_run(
    run_dir: Path, spec: SyntheticRun, params: dict[str, np.ndarray] | None = None
) -> Path:
    """Write a finished run directory for spec (or for the given, possibly broken, params)."""
    params = synthetic_params(spec) if params is None else params
    rng = np.random.default_rng(spec.seed + 1)
    # raw features distributed as the run's standardization says the training split was
    feature_mean = synthetic_params(spec)["input.mean"]
    feature_std = synthetic_params(spec)["input.std"]
    run_dir.mkdir(parents=True)
    config = TrainConfig(
        task=spec.task,
        hidden=spec.hidden,
        activation=spec.activation,
        batchnorm=spec.batchnorm,
        bn_epsilon=spec.epsilon,
        seed=spec.seed,
    )
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    write_npz(run_dir / "params.npz", params)
    heldout_x = rng.normal(feature_mean, feature_std, (spec.heldout_rows, spec.features))
    if spec.task == "classification":
        heldout_y = rng.integers(0, spec.outputs, spec.heldout_rows)
        names = {"class_names": [f"class_{c}" for c in range(spec.outputs)]}
        metric = {"test_accuracy": 0.5}
    else:
        heldout_y = rng.normal(0.0, 1.0, (spec.heldout_rows, spec.outputs))
        names = {"target_names": [f"target_{t}" for t in range(spec.outputs)]}
        metric = {"test_rmse": 1.0}
    write_npz(run_dir / "heldout.npz", {"x": heldout_x, "y": heldout_y})
    (run_dir / "history.json").write_text("[]")
    meta = {
        "run_id": f"synthetic-{spec.seed}",
        "status": "finished",
        "task": spec.task,
        "feature_names": [f"f{i}" for i in range(spec.features)],
        **names,
        "activation": spec.activation,
        "batchnorm": spec.batchnorm,
        "epsilon": spec.epsilon,
        "stats": "ema",
        "bn_momentum": 0.1,
        "running_var": "unbiased",
        "params_sha256": hashlib.sha256((run_dir / "params.npz").read_bytes()).hexdigest(),
        **metric,
        "dev_error": 0.5,
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return run_dir


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty folder for exported models (the failure tests check it stays as it was)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def make_params():
    """Factory: make_params(**SyntheticRun fields) -> float32 params, to break or mismatch."""

    def make(**fields: object) -> dict[str, np.ndarray]:
        return synthetic_params(SyntheticRun(**fields))  # type: ignore[arg-type]

    return make


@pytest.fixture
def synthetic_run(tmp_path: Path):
    """Factory: synthetic_run(**SyntheticRun fields) -> a finished run directory under tmp_path."""
    counter = iter(range(1_000_000))

    def make(params: dict[str, np.ndarray] | None = None, **fields: object) -> Path:
        spec = SyntheticRun(**fields)  # type: ignore[arg-type]
        return write_synthetic_run(tmp_path / f"run{next(counter)}", spec, params)

    return make


def _regression_data(path: Path, seed: int = 7) -> Path:
    """A smooth two-target function of raw-scaled features, as an NPZ training can read."""
    rng = np.random.default_rng(seed)
    x = rng.normal([5.0, -200.0, 0.01, 40.0], [2.0, 50.0, 0.005, 10.0], size=(300, 4))
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    y = np.stack([100.0 + 30.0 * np.tanh(z[:, 0] - z[:, 1]), 0.2 * z[:, 2] * z[:, 3]], axis=1)
    with path.open("wb") as handle:
        np.savez(handle, x=x, y=y)
    return path


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real, tiny training runs (a few seconds in all): name -> finished run directory."""
    from bnserve.training.train import train

    root = tmp_path_factory.mktemp("trained")
    regression_npz = _regression_data(root / "regression.npz")
    configs = {
        "digits-bn": TrainConfig(hidden=(32, 16), epochs=2, seed=1),
        "digits-no-bn": TrainConfig(hidden=(16,), batchnorm=False, activation="tanh", epochs=2),
        "regression-bn-population": TrainConfig(
            data=str(regression_npz), hidden=(16, 16), stats="population", epochs=3, seed=2
        ),
    }
    return {
        name: Path(train(config, root / name, progress=False).run_dir)
        for name, config in configs.items()
    }
