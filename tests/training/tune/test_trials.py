"""A worker's trial: JSON in, JSON out; real training; failures become failed outcomes."""

from __future__ import annotations

import json

from bnserve.training.config import TrainConfig
from bnserve.training.rundir import load_run
from bnserve.training.tune.trials import TrialOutcome, TrialRequest, run_trial_json


def _request(tmp_path, **config_changes):
    config = TrainConfig(epochs=2, hidden=(16,)).replace(**config_changes)
    return TrialRequest(trial=3, config=config.to_dict(), run_dir=str(tmp_path / "run"))


def test_a_trial_trains_a_real_run_directory(tmp_path):
    outcome = TrialOutcome.from_json(run_trial_json(_request(tmp_path).to_json()))
    assert outcome.trial == 3 and outcome.state == "finished" and outcome.error is None
    run = load_run(tmp_path / "run")
    assert outcome.dev_error == run.meta["dev_error"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert outcome.curve == [record["dev_error"] for record in history]
    assert len(outcome.curve) == 2 and outcome.seconds > 0


def test_a_failing_trial_reports_the_problem_instead_of_raising(tmp_path):
    request = _request(tmp_path, data=str(tmp_path / "gone.csv"))
    outcome = TrialOutcome.from_json(run_trial_json(request.to_json()))
    assert outcome.state == "failed" and outcome.dev_error is None
    assert "DataError" in outcome.error and "gone.csv: no such data file" in outcome.error


def test_the_median_rule_stops_a_trial_worse_than_the_references(tmp_path):
    good_curves = [[0.5, 0.1, 0.05, 0.04]] * 4
    request = TrialRequest(
        trial=0,
        config={"epochs": 8, "lr": 1e-5, "beta1": 0.9, "batch_size": 64},  # far from the optimum
        run_dir=str(tmp_path / "run"),
        objective="synthetic",
        early_stop={
            "rule": "median",
            "reference_curves": good_curves,
            "grace_epochs": 2,
            "min_reference": 4,
        },
    )
    outcome = TrialOutcome.from_json(run_trial_json(request.to_json()))
    assert outcome.state == "pruned" and len(outcome.curve) == 2
    # with fewer references than min_reference it runs to the end
    lonely = TrialRequest(
        **{
            **request.__dict__,
            "early_stop": {**request.early_stop, "reference_curves": good_curves[:3]},
        }
    )
    assert TrialOutcome.from_json(run_trial_json(lonely.to_json())).state == "finished"


def test_early_stopping_and_the_tuners_halving_rule_work_together(tmp_path):
    # patience 1 on digits: the trial ends when the dev error stops improving, keeping the best
    config = TrainConfig(epochs=12, hidden=(16,), early_stopping=1, lr=3e-2)
    alone = TrialRequest(trial=0, config=config.to_dict(), run_dir=str(tmp_path / "alone"))
    outcome = TrialOutcome.from_json(run_trial_json(alone.to_json()))
    run = load_run(tmp_path / "alone")
    assert outcome.state == "finished" and len(outcome.curve) == run.meta["epochs_trained"] < 12
    assert outcome.curve[run.meta["kept_epoch"] - 1] == min(outcome.curve)
    assert abs(outcome.dev_error - min(outcome.curve)) < 1e-6
    # the halving rule still prunes at its first rung when the references are far better
    halving = TrialRequest(
        trial=1,
        config=config.to_dict(),
        run_dir=str(tmp_path / "halved"),
        early_stop={
            "rule": "halving",
            "reference_curves": [[0.0, 0.0]] * 4,
            "grace_epochs": 2,
            "reduction": 3,
            "min_reference": 4,
        },
    )
    pruned = TrialOutcome.from_json(run_trial_json(halving.to_json()))
    assert pruned.state == "pruned" and len(pruned.curve) == 2
