"""Fixtures every test package may use: a real, tiny filesystem to fill up; real, tiny training
runs (export's and the drift command's tests); and, for the whole suite, the float32 data cache
(training/data/cache.py) in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


class SmallDisks:
    """tmpfs mounts of a given size under a test's tmp_path: writes fail with a real ENOSPC."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, kib: int) -> Path:
        point = self.root / f"disk{len(self.mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=755", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        self.mounted.append(point)
        return point

    def resize(self, point: Path, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(point)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisks]:
    """Needs root to mount (CI runs as root); skipped elsewhere. Unmounted after the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disks = SmallDisks(tmp_path)
    yield disks
    for point in disks.mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=True)


@pytest.fixture(autouse=True)
def _data_cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BNSERVE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "data-cache"))


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
    from bnserve.training.config import TrainConfig  # training only for the tests that train
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
