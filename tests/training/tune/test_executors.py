"""Executors: local spawned processes and Ray tasks run the same trials; a killed worker costs
only its own trial; bad addresses fail fast."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bnserve.training.rundir import load_run
from bnserve.training.tune.errors import TrialCrashed, TuneSettingsError, WorkerLost
from bnserve.training.tune.executors import LocalExecutor, check_ray_address
from bnserve.training.tune.runner import run_tune
from bnserve.training.tune.settings import TuneSettings
from bnserve.training.tune.trials import TrialOutcome, TrialRequest
from tests.support.processes import alive
from tests.support.waiting import wait_until

SYNTHETIC = {
    "fixed": {"epochs": 5},
    "search": {
        "lr": {"scale": "log", "low": 1e-5, "high": 1.0},
        "beta1": {"scale": "log1m", "low": 0.5, "high": 0.999},
        "batch_size": {"choice": [16, 64, 256]},
    },
}


def _synthetic_request(trial, tmp_path):
    config = {"epochs": 4, "lr": 10.0**-trial, "beta1": 0.9, "batch_size": 64}
    return TrialRequest(trial=trial, config=config, run_dir=str(tmp_path), objective="synthetic")


def test_local_executor_runs_trials_in_worker_processes(tmp_path):
    executor = LocalExecutor(2)
    try:
        futures = [executor.submit(_synthetic_request(i, tmp_path).to_json()) for i in range(4)]
        outcomes = [TrialOutcome.from_json(future.result(timeout=60)) for future in futures]
    finally:
        executor.close()
    assert [o.trial for o in outcomes] == [0, 1, 2, 3]
    assert all(o.state == "finished" and len(o.curve) == 4 for o in outcomes)
    assert outcomes[2].dev_error < outcomes[0].dev_error  # lr 1e-2 is nearer the optimum than 1


def test_fewer_than_one_worker_is_refused():
    with pytest.raises(TuneSettingsError, match="--workers 0"):
        LocalExecutor(0)


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_ray_address_fails_before_any_trial(tmp_path):
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(TuneSettingsError, match=rf"--ray-address {address}: unreachable"):
        check_ray_address(address)
    settings = TuneSettings(
        out=tmp_path / "tune", space=SYNTHETIC, ray_address=address, progress=False
    )
    with pytest.raises(TuneSettingsError, match="unreachable"):
        run_tune(settings)
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize("address", ["nohost", "host:port", "ray://:10001"])
def test_a_malformed_ray_address_is_refused(address):
    with pytest.raises(TuneSettingsError, match="expected HOST:PORT"):
        check_ray_address(address)


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed here (optional extra: pip install 'bnserve[ray]')",
)
def test_ray_runs_the_same_trials_as_local_processes(tmp_path):
    real_training = {
        "fixed": {"epochs": 2, "hidden": [16]},
        "search": {"lr": {"scale": "log", "low": 1e-3, "high": 1e-1}},
    }
    common = {"space": real_training, "trials": 4, "workers": 2, "progress": False, "plots": False}
    on_ray = run_tune(TuneSettings(out=tmp_path / "ray", ray_address="local", **common))
    local = run_tune(TuneSettings(out=tmp_path / "local", **common))
    facts = [
        [(r.trial, r.params, r.state, r.dev_error, r.history) for r in result.ranked]
        for result in (on_ray, local)
    ]
    assert facts[0] == facts[1]
    assert all(r.state == "finished" for r in on_ray.ranked)
    for record in on_ray.ranked:  # each Ray task wrote its trial's run directory
        assert load_run(tmp_path / "ray" / record.run_dir).meta["dev_error"] == record.dev_error


def _endless_request(trial, tmp_path):
    """A synthetic trial that runs until its worker is stopped (10^9 epochs)."""
    config = {"epochs": 10**9, "lr": 1e-2, "beta1": 0.9, "batch_size": 64}
    return TrialRequest(trial=trial, config=config, run_dir=str(tmp_path), objective="synthetic")


def _close_within(executor, timeout=60.0, **kwargs):
    """close() in a thread, so a hang fails the test instead of stalling the suite."""
    closer = threading.Thread(target=executor.close, kwargs=kwargs)
    closer.start()
    closer.join(timeout)
    assert not closer.is_alive(), f"close({kwargs}) did not return within {timeout:.0f} s"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_killed_worker_fails_only_its_own_trial_and_is_replaced(tmp_path):
    executor = LocalExecutor(2)
    try:
        doomed = executor.submit(_endless_request(0, tmp_path).to_json())
        wait_until(
            lambda: len(executor.worker_pids()) == 1,
            "the first worker",
            timeout_s=60.0,
            interval_s=0.01,
        )
        (first_pid,) = executor.worker_pids()
        survivor = executor.submit(_endless_request(1, tmp_path).to_json())
        wait_until(
            lambda: len(executor.worker_pids()) == 2,
            "the second worker",
            timeout_s=60.0,
            interval_s=0.01,
        )

        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(WorkerLost, match=rf"worker process {first_pid} ended \(exit code -9\)"):
            doomed.result(timeout=60)
        assert not survivor.done()  # the other worker's trial runs on

        replacement = executor.submit(_synthetic_request(2, tmp_path).to_json())
        outcome = TrialOutcome.from_json(replacement.result(timeout=60))
        assert outcome.trial == 2 and outcome.state == "finished"
        assert first_pid not in executor.worker_pids() and len(executor.worker_pids()) == 2
        pids = executor.worker_pids()
    finally:
        _close_within(executor, wait=False)
    assert survivor.done() and isinstance(survivor.exception(), WorkerLost)
    assert not any(alive(pid) for pid in pids)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_close_returns_and_reaps_every_worker_after_an_idle_one_was_killed(tmp_path):
    # ProcessPoolExecutor hung here: a worker killed while idle held the queue's read lock, and
    # the pool's shutdown waited for the other worker forever.
    executor = LocalExecutor(2)
    futures = [executor.submit(_synthetic_request(i, tmp_path).to_json()) for i in range(2)]
    assert all(TrialOutcome.from_json(f.result(timeout=60)).state == "finished" for f in futures)
    pids = executor.worker_pids()
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    _close_within(executor)
    assert not any(alive(pid) for pid in pids)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_close_without_waiting_stops_running_trials_at_once(tmp_path):
    executor = LocalExecutor(1)
    running = executor.submit(_endless_request(0, tmp_path).to_json())
    queued = executor.submit(_endless_request(1, tmp_path).to_json())
    wait_until(
        lambda: len(executor.worker_pids()) == 1, "the worker", timeout_s=60.0, interval_s=0.01
    )
    pids = executor.worker_pids()
    _close_within(executor, wait=False)
    for future in (running, queued):
        with pytest.raises(WorkerLost, match="interrupted"):
            future.result(timeout=0)
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit(_synthetic_request(2, tmp_path).to_json())


def test_workers_that_cannot_start_fail_the_trial_and_later_submits_instead_of_hanging(
    tmp_path, monkeypatch
):
    def refuse(self):
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(LocalExecutor, "_start_worker", refuse)
    executor = LocalExecutor(2)
    future = executor.submit(_synthetic_request(0, tmp_path).to_json())
    with pytest.raises(TrialCrashed, match="OSError: Resource temporarily unavailable"):
        future.result(timeout=60)
    with pytest.raises(RuntimeError, match="local workers unusable: OSError"):
        executor.submit(_synthetic_request(1, tmp_path).to_json())
    _close_within(executor)


@pytest.mark.parametrize(
    ("env", "home_token", "expected"),
    [
        ({}, False, "False None"),  # nothing to send: Ray's own default applies
        ({"RAY_AUTH_TOKEN": "t0k"}, False, "True token"),
        ({"RAY_AUTH_TOKEN_PATH": "/some/file"}, False, "True token"),
        ({}, True, "True token"),  # ~/.ray/auth_token
        ({"RAY_AUTH_TOKEN": "t0k", "RAY_AUTH_MODE": "disabled"}, False, "False disabled"),
    ],
)
def test_a_cluster_address_sends_the_token_ray_would(tmp_path, env, home_token, expected):
    """The bug: ray.init(address=…) sends no token unless RAY_AUTH_MODE=token is set, so a head
    with token authentication answered InvalidAuthToken. (A subprocess: Ray's config is global;
    the real cluster is tests/training/tune/test_ray_cluster.py, marked slow.)"""
    if home_token:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("t0k")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    code = (
        "import os; from bnserve.training.tune.executors import use_cluster_token; "
        "print(use_cluster_token(), os.environ.get('RAY_AUTH_MODE'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == expected, result.stderr
