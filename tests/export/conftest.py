"""Run directories for the exporter's tests.

`write_synthetic_run` writes random but realistically scaled parameters in the run-directory
layout of docs/contracts.md (fast, and covers shapes training's defaults never produce);
real, tiny training runs are tests/conftest.py's `trained_runs` (the drift command's tests use
them too).
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


PENGUINS = Path(__file__).parents[1] / "training" / "fixtures" / "penguins.csv"


@dataclass(frozen=True)
class ExportedRun:
    """A finished training run and the model `bnserve export` wrote from it."""

    run_dir: Path
    model: Path


@pytest.fixture(scope="session")
def penguins_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedRun:
    """Penguins trained from the raw file (text columns, NA cells: `--target species`, small and
    quick), exported: a mixed model taking one input per column."""
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.train import train

    folder = tmp_path_factory.mktemp("penguins")
    run_dir = folder / "run"
    config = TrainConfig(data=str(PENGUINS), target="species", hidden=(16, 8), epochs=40)
    train(config, run_dir, progress=False, plot=False, cache_dir="off")
    model = folder / "penguins.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=model))
    return ExportedRun(run_dir, model)
