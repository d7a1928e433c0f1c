"""A run killed by SIGKILL and resumed ends with the parameters of a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from bnserve.training.rundir import checkpoint_paths, read_npz
from tests.support.waiting import wait_until

EPOCHS = 40  # long enough that the kill after epoch 3 lands well before the end
TRAIN_ARGS = ["--epochs", str(EPOCHS), "--dropout", "0.1", "--no-progress", "--no-plot"]
REPO = Path(__file__).resolve().parents[2]


def run_training(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bnserve.training", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(condition, process: subprocess.Popen, deadline_seconds: float) -> None:
    """Poll `condition` until it holds; fail if the deadline passes or the process exits."""

    def reached() -> bool:
        if condition():
            return True
        assert process.poll() is None, f"training exited early: {process.communicate()}"
        return False

    wait_until(reached, "a checkpoint", deadline_seconds)


def test_resume_after_sigkill_gives_identical_parameters(tmp_path):
    reference = run_training("--out", str(tmp_path / "reference"), *TRAIN_ARGS)
    killed_dir = tmp_path / "killed"
    victim = run_training("--out", str(killed_dir), *TRAIN_ARGS)
    third_checkpoint = checkpoint_paths(killed_dir, 3)[1]
    wait_for(third_checkpoint.is_file, victim, deadline_seconds=120)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    meta = json.loads((killed_dir / "meta.json").read_text())
    assert meta["status"] == "running"  # killed before it finished
    assert not (killed_dir / "params.npz").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "bnserve.training", "--resume", str(killed_dir), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    _, reference_stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_stderr

    expected = read_npz(tmp_path / "reference" / "params.npz")
    actual = read_npz(killed_dir / "params.npz")
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)
    history = json.loads((killed_dir / "history.json").read_text())
    reference_history = json.loads((tmp_path / "reference" / "history.json").read_text())
    assert [r["cost"] for r in history] == [r["cost"] for r in reference_history]
    assert len(history) == EPOCHS
    assert not list(killed_dir.rglob(".tmp-*"))


def test_a_run_killed_before_its_first_checkpoint_resumes_from_epoch_0(tmp_path):
    """The bug: --resume said "no checkpoint" and --out said "already exists"."""
    small = ["--hidden", "16", "--no-progress", "--no-plot"]
    killed_dir = tmp_path / "killed"
    # --no-checkpoints: whenever the kill lands, no checkpoint exists (as in a first-epoch kill)
    victim = run_training("--out", str(killed_dir), "--epochs", "500", "--no-checkpoints", *small)
    wait_for((killed_dir / "meta.json").is_file, victim, deadline_seconds=120)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert json.loads((killed_dir / "meta.json").read_text())["status"] == "running"
    assert not list((killed_dir / "checkpoints").glob("*.json"))

    again = subprocess.run(
        [sys.executable, "-m", "bnserve.training", "--out", str(killed_dir), *small],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 2 and "use --resume" in again.stderr

    resumed = subprocess.run(
        [sys.executable, "-m", "bnserve.training", "--resume", str(killed_dir), "--epochs", "3",
         *small],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "no checkpoint yet" in resumed.stderr and "restarting from epoch 0" in resumed.stderr
    reference = subprocess.run(
        [sys.executable, "-m", "bnserve.training", "--out", str(tmp_path / "ref"), "--epochs", "3",
         *small],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    expected = read_npz(tmp_path / "ref" / "params.npz")
    actual = read_npz(killed_dir / "params.npz")
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)
    checkpointed = sorted(p.name for p in (killed_dir / "checkpoints").glob("*.json"))
    assert checkpointed == ["epoch-0001.json", "epoch-0002.json", "epoch-0003.json"]
    assert json.loads((killed_dir / "meta.json").read_text())["status"] == "finished"
