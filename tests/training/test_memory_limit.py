"""Training on data larger than the memory the process may use (a cgroup v1 memory limit).

The float32 array of the generated CSV is larger than the limit; the run converts it into the
cache and trains (shuffled batches, dev/test scoring, --stats population) within the limit.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bnserve.training.rundir import load_run
from tests.support.memory_cgroup import run_limited, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
FEATURES = 256


def write_wide_csv(path, rows: int) -> int:
    """A CSV of small integers (2 bytes a cell, 4 as float32); returns the float32 bytes."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 10, (2000, FEATURES))
    labels = (block[:, 0] + block[:, 1] > 9).astype(int)
    text = "".join(",".join(map(str, r)) + f",{t}\n" for r, t in zip(block, labels, strict=True))
    with path.open("w") as out:
        out.write(",".join(f"f{i}" for i in range(FEATURES)) + ",y\n")
        for _ in range(rows // len(block)):
            out.write(text)
    return (rows // len(block)) * len(block) * FEATURES * 4


def train_under_limit(tmp_path, rows: int, limit_mb: int, epochs: int, timeout: float) -> None:
    data = tmp_path / "wide.csv"
    data_bytes = write_wide_csv(data, rows)
    limit = limit_mb << 20
    assert data_bytes > limit  # the data cannot all be in memory at once
    command = [
        *(
            sys.executable,
            "-m",
            "bnserve.training",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
        ),
        *("--epochs", str(epochs), "--hidden", "8", "--batch-size", "1024"),
        *("--stats", "population", "--no-plot", "--no-progress", "--no-checkpoints"),
        *("--cache-dir", str(tmp_path / "cache")),
    ]
    result = run_limited(command, limit, timeout)
    assert result.oom_kills == 0, result.stderr[-2000:]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.peak_bytes <= limit
    run = load_run(tmp_path / "run")
    assert run.meta["test_accuracy"] > 0.6  # it learned (about 0.72 after one epoch)
    run_bytes = sum(p.stat().st_size for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert run_bytes < data_bytes / 5  # heldout.npz is capped: the run never copies the data


def test_training_on_data_larger_than_the_memory_limit(tmp_path):
    # 164 MB of float32 under a 144 MB limit (about 100 MB of it is the interpreter, numpy
    # and pyarrow themselves)
    train_under_limit(tmp_path, rows=160_000, limit_mb=144, epochs=1, timeout=300)


@pytest.mark.slow
def test_training_on_a_gigabyte_under_a_256_mb_limit(tmp_path):
    train_under_limit(tmp_path, rows=1_000_000, limit_mb=256, epochs=2, timeout=3000)
