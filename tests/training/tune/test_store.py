"""The SQLite store: trial states, interrupted trials back to pending, atomic rounds."""

from __future__ import annotations

import sqlite3

import pytest

from bnserve.training.tune.store import PlannedTrial, TrialStore


def _planned(first, count):
    return [
        PlannedTrial(
            trial=i, point=i, params={"lr": 0.1 * (i + 1)}, seed=0, run_dir=f"trials/trial-{i:04d}"
        )
        for i in range(first, first + count)
    ]


def test_trials_move_through_their_states(tmp_path):
    with TrialStore(tmp_path / "tune.sqlite") as store:
        store.save_settings({"trials": 3, "space": {"search": {}}})
        store.add_round(0, {"ranges": {}, "choices": {}}, _planned(0, 3))
        store.mark_running(0)
        store.mark_done(0, state="finished", dev_error=0.1, history=[0.3, 0.1], seconds=1.5)
        store.mark_running(1)
        store.mark_done(1, state="failed", dev_error=None, history=[], seconds=0.1, error="boom")
        records = store.trials()
        assert [r.state for r in records] == ["finished", "failed", "pending"]
        assert records[0].history == [0.3, 0.1] and records[0].attempts == 1
        assert records[1].error == "boom"
        assert records[2].params == {"lr": pytest.approx(0.3)}
        assert store.settings() == {"trials": 3, "space": {"search": {}}}
    # a reader sees the same (WAL, written by this process alone)
    with TrialStore(tmp_path / "tune.sqlite", readonly=True) as reader:
        assert [r.state for r in reader.trials()] == ["finished", "failed", "pending"]


def test_running_trials_of_a_killed_coordinator_go_back_to_pending(tmp_path):
    with TrialStore(tmp_path / "tune.sqlite") as store:
        store.add_round(0, {"ranges": {}, "choices": {}}, _planned(0, 3))
        store.mark_running(0)
        store.mark_done(0, state="finished", dev_error=0.2, history=[0.2], seconds=1.0)
        store.mark_running(1)
    with TrialStore(tmp_path / "tune.sqlite") as store:
        assert store.requeue_interrupted() == [1]
        states = {r.trial: (r.state, r.attempts) for r in store.trials()}
        assert states == {0: ("finished", 1), 1: ("pending", 1), 2: ("pending", 0)}
        assert store.requeue_interrupted() == []


def test_a_round_is_stored_all_or_nothing(tmp_path):
    with TrialStore(tmp_path / "tune.sqlite") as store:
        store.add_round(0, {"ranges": {}, "choices": {}}, _planned(0, 2))
        with pytest.raises(sqlite3.IntegrityError):
            store.add_round(1, {"ranges": {}, "choices": {}}, _planned(1, 2))  # trial 1 exists
        assert [index for index, _ in store.rounds()] == [0]
        assert len(store.trials()) == 2


def test_only_end_states_are_accepted(tmp_path):
    with TrialStore(tmp_path / "tune.sqlite") as store:
        store.add_round(0, {"ranges": {}, "choices": {}}, _planned(0, 1))
        with pytest.raises(ValueError, match="not 'running'"):
            store.mark_done(0, state="running", dev_error=None, history=[], seconds=0)
