"""meta.json of a run directory (docs/contracts.md), as typed structures.

train() writes it twice: `RunMeta.new()` ("running", no facts yet) when a run starts, and with
the model's and the outcome's facts, "finished", last of all its files. A resumed run reads it
back (`RunMeta.from_json`) and writes it "running" again, facts and all, until it finishes anew.
Readers (export, the tuner) go through `rundir.load_run`, which returns the parsed JSON.

The JSON keys are the field names, in this order: run_id, created_at, status, the ModelFacts,
then the Outcome (test_accuracy or test_rmse last).
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from bnserve.training.config import TrainConfig
from bnserve.training.data.loading import Dataset, Split
from bnserve.training.early_stopping import BestEpoch

Status = Literal["running", "finished"]
HeldoutPart = Literal["test", "dev", "train"]  # which rows heldout.npz holds


class EarlyStoppingFacts(TypedDict):
    """`early_stopping` of a run with --early-stopping."""

    patience: int  # epochs without a better dev objective before it stops
    min_delta: float  # what counts as better
    best_epoch: int  # the epoch params.npz holds
    stopped: bool  # False: it ran every epoch


class WeightAveragingFacts(TypedDict):
    """`weight_averaging` of a run with --average-epochs (averaging.py `describe`)."""

    epochs: int  # the window asked for
    first_epoch: int | None  # the window's epochs actually averaged; None when on_epoch stopped
    last_epoch: int | None  # the run before the window (it keeps the last epoch's weights)
    averaged: int  # how many epochs params.npz is the mean of


class SplitFacts(TypedDict):
    """`split`: how the rows were divided, and which part heldout.npz holds."""

    dev_fraction: float
    test_fraction: float
    seed: int  # the split's seed (config.data_split_seed)
    train_rows: int
    dev_rows: int
    test_rows: int
    heldout: HeldoutPart
    folds: NotRequired[int]  # with --folds: K, the dev fold and the repeat
    fold: NotRequired[int]
    fold_repeat: NotRequired[int]


@dataclass(frozen=True)
class ModelFacts:
    """What the trained network is: what inference.predict and export read."""

    task: str  # "classification" | "regression"
    data: str  # the source, for messages
    feature_names: list[str]
    activation: str
    batchnorm: bool
    epsilon: float  # batch norm's ε
    stats: str  # "ema" | "population"
    bn_momentum: float  # PyTorch convention (weight of the new batch)
    running_var: str  # "unbiased" | "biased"
    class_names: list[str] | None  # classification only (the key is absent for regression)
    target_names: list[str] | None  # regression only (absent for classification)
    # a table with text columns (schema.json): feature_names are then the D inputs params.npz
    # has, columns the table's feature columns; unseen_levels, per dev/test part, the cells of
    # levels the training rows never had. Absent (None) for a table of numbers only.
    columns: list[str] | None = None
    unseen_levels: dict[str, Any] | None = None
    # regression: "none" or "log", what the network's standardized output is of
    # (training/target_transform.py); None (absent) for classification and older runs
    target_transform: str | None = None

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        del values["target_names" if self.task == "classification" else "class_names"]
        for optional in ("columns", "unseen_levels", "target_transform"):
            if values[optional] is None:
                del values[optional]
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ModelFacts:
        """A key an older bnserve did not write reads as None."""
        facts: dict[str, Any] = {
            field.name: values.get(field.name) for field in dataclasses.fields(cls)
        }
        return cls(**facts)


@dataclass(frozen=True)
class Outcome:
    """How the run was trained and how well it did."""

    params_sha256: str  # hex sha256 of params.npz's bytes
    epochs_trained: int
    kept_epoch: int  # the epoch params.npz comes from: the last, or the best (early stopping)
    early_stopping: EarlyStoppingFacts | None
    weight_averaging: WeightAveragingFacts | None
    split: SplitFacts
    metric: str  # the dev metric selected on (training/metrics.py)
    class_weight: list[float] | None  # per-class loss weights of --class-weight balanced
    dev_error: float | None  # the metric's objective on the dev rows; None without any
    dev_metrics: dict[str, float] | None  # every metric of the task plus its loss
    test_metrics: dict[str, float] | None
    test_score: float | None  # test accuracy (classification) or RMSE; None without test rows

    def to_json(self, task: str) -> dict[str, Any]:
        values = {
            field.name: getattr(self, field.name) for field in dataclasses.fields(self)
        }  # not asdict: the TypedDicts are written as they are
        score_key = "test_accuracy" if task == "classification" else "test_rmse"
        values[score_key] = values.pop("test_score")
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any], task: str) -> Outcome:
        """A key an older bnserve did not write reads as None: the resumed run rewrites them all
        when it finishes."""
        score_key = "test_accuracy" if task == "classification" else "test_rmse"
        names = {field.name for field in dataclasses.fields(cls)} - {"test_score"}
        facts: dict[str, Any] = {name: values.get(name) for name in names}
        return cls(**facts, test_score=values.get(score_key))


@dataclass(frozen=True)
class RunMeta:
    """meta.json: the run's identity and status, and once it has finished, its facts."""

    run_id: str  # 12 hex digits, random
    created_at: str  # ISO 8601 UTC, seconds: 2026-01-31T12:00:00Z
    status: Status
    model: ModelFacts | None = None  # None until the run first finishes
    outcome: Outcome | None = None

    @classmethod
    def new(cls) -> RunMeta:
        """A run starting now, with a fresh id."""
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return cls(uuid.uuid4().hex[:12], now.replace("+00:00", "Z"), "running")

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "run_id": self.run_id,
            "created_at": self.created_at,
            "status": self.status,
        }
        if self.model is not None:
            values |= self.model.to_json()
            if self.outcome is not None:
                values |= self.outcome.to_json(self.model.task)
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunMeta:
        """Read back what `to_json` wrote (a resumed run's meta.json)."""
        model = ModelFacts.from_json(values) if "task" in values else None
        outcome = None
        if model is not None and "params_sha256" in values:
            outcome = Outcome.from_json(values, model.task)
        status = values["status"]
        return cls(values["run_id"], values["created_at"], status, model, outcome)

    def with_status(self, status: Status) -> RunMeta:
        return dataclasses.replace(self, status=status)


# --- a run's facts, from its config, data and early-stopping tracker ---------------------------


def model_facts(config: TrainConfig, dataset: Dataset) -> ModelFacts:
    """What meta.json says the network is."""
    return ModelFacts(
        task=dataset.task,
        data=dataset.source,
        feature_names=dataset.feature_names,
        activation=config.activation,
        batchnorm=config.batchnorm,
        epsilon=config.bn_epsilon,
        stats=config.stats,
        bn_momentum=config.bn_momentum,
        running_var=config.running_var,
        class_names=dataset.class_names,
        target_names=dataset.target_names,
        target_transform=config.target_transform if dataset.task == "regression" else None,
    )


def split_facts(config: TrainConfig, split: Split, heldout: HeldoutPart) -> SplitFacts:
    """meta.json's `split`: the fractions, the seed, each part's rows, heldout.npz's part."""
    facts = SplitFacts(
        dev_fraction=config.dev_fraction,
        test_fraction=config.test_fraction,
        seed=config.data_split_seed,
        train_rows=len(split.train),
        dev_rows=len(split.dev),
        test_rows=len(split.test),
        heldout=heldout,
    )
    if config.folds is not None:
        facts["folds"] = config.folds
        facts["fold"] = config.fold
        facts["fold_repeat"] = config.fold_repeat
    return facts


def early_stopping_facts(config: TrainConfig, best: BestEpoch) -> EarlyStoppingFacts | None:
    """meta.json's `early_stopping`: None without --early-stopping."""
    if config.early_stopping is None:
        return None
    return EarlyStoppingFacts(
        patience=config.early_stopping,
        min_delta=config.min_delta,
        best_epoch=best.epoch,
        stopped=best.should_stop,
    )
