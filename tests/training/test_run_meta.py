"""training/run_meta.py: meta.json from typed structures, with the keys docs/contracts.md lists."""

from __future__ import annotations

import json

import pytest

from bnserve.training.run_meta import ModelFacts, Outcome, RunMeta

CONTRACT_ORDER = [
    "run_id", "created_at", "status", "task", "data", "feature_names", "activation", "batchnorm",
    "epsilon", "stats", "bn_momentum", "running_var", "class_names", "params_sha256",
    "epochs_trained", "kept_epoch", "early_stopping", "weight_averaging", "split", "metric",
    "class_weight", "dev_error", "dev_metrics", "test_metrics", "test_accuracy",
]  # fmt: skip


def _facts(task: str) -> tuple[ModelFacts, Outcome]:
    classification = task == "classification"
    model = ModelFacts(
        task, "digits", ["a", "b"], "relu", True, 1e-5, "ema", 0.1, "unbiased",
        ["0", "1"] if classification else None, None if classification else ["y"],
    )  # fmt: skip
    split = {"dev_fraction": 0.15, "test_fraction": 0.15, "seed": 0, "train_rows": 7,
             "dev_rows": 2, "test_rows": 0, "heldout": "dev"}  # fmt: skip
    outcome = Outcome(
        "ab" * 32, 3, 3, None, None, split, "error", None, 0.5, {"error": 0.5}, None, None
    )
    return model, outcome


def test_a_new_run_has_only_its_identity_and_status():
    meta = RunMeta.new()
    assert list(meta.to_json()) == ["run_id", "created_at", "status"]
    assert len(meta.run_id) == 12 and meta.created_at.endswith("Z") and meta.status == "running"


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_keys_in_the_contracts_order_and_a_round_trip(task):
    model, outcome = _facts(task)
    values = RunMeta("r", "t", "finished", model, outcome).to_json()
    order = CONTRACT_ORDER
    if task == "regression":
        order = [{"class_names": "target_names", "test_accuracy": "test_rmse"}.get(key, key)
                 for key in CONTRACT_ORDER]  # fmt: skip
    assert list(values) == order
    assert RunMeta.from_json(json.loads(json.dumps(values))).to_json() == values


def test_a_real_runs_meta_json_reads_back_unchanged(trained_runs):
    for run_dir in trained_runs.values():
        text = (run_dir / "meta.json").read_text()
        meta = RunMeta.from_json(json.loads(text))
        assert meta.status == "finished" and meta.outcome is not None
        assert json.dumps(meta.to_json(), indent=2) + "\n" == text


def test_a_meta_json_of_an_older_bnserve_reads_back_with_nones():
    model, outcome = _facts("classification")
    values = RunMeta("r", "t", "finished", model, outcome).to_json()
    for newer in ("class_weight", "dev_metrics", "test_metrics", "weight_averaging", "metric"):
        del values[newer]
    read = RunMeta.from_json(values)
    assert read.outcome is not None and read.outcome.class_weight is None
    assert read.outcome.params_sha256 == outcome.params_sha256
