"""Executors: local spawned processes and Ray tasks run the same trials; bad addresses fail fast."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from training.rundir import load_run
from training.tune.executors import LocalExecutor, check_ray_address
from training.tune.runner import run_tune
from training.tune.settings import TuneSettings
from training.tune.space import SpaceError
from training.tune.trials import TrialOutcome, TrialRequest

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
    with pytest.raises(SpaceError, match="--workers 0"):
        LocalExecutor(0)


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_ray_address_fails_before_any_trial(tmp_path):
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(SpaceError, match=rf"--ray-address {address}: unreachable"):
        check_ray_address(address)
    settings = TuneSettings(
        out=tmp_path / "tune", space=SYNTHETIC, ray_address=address, progress=False
    )
    with pytest.raises(SpaceError, match="unreachable"):
        run_tune(settings)
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize("address", ["nohost", "host:port", "ray://:10001"])
def test_a_malformed_ray_address_is_refused(address):
    with pytest.raises(SpaceError, match="expected HOST:PORT"):
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
