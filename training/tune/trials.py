"""What a worker runs: one trial from a JSON request to a JSON outcome.

Requests and outcomes cross process (and Ray) boundaries as JSON text, so a worker needs only
this module and the training package, and nothing but plain data travels.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bnserve.training.tune.early_stop import build_rule

OBJECTIVES = ("train", "synthetic")


@dataclass(frozen=True)
class TrialRequest:
    """One trial as the coordinator hands it to a worker."""

    trial: int  # index in the tune
    config: dict[str, Any]  # TrainConfig.to_dict() of this trial
    run_dir: str  # absolute path of the trial's run directory (created by training)
    objective: str = "train"  # "train" (real training) or "synthetic" (see synthetic_curve)
    checkpoints: bool = False  # per-epoch checkpoints in the trial's run directory
    # {"rule": "median" | "halving", that rule's fields}, or None: no early stopping
    early_stop: dict[str, Any] | None = None
    cv: int | None = None  # cross-validation: train this many folds (run_dir/fold-I each)
    cv_repeats: int = 1  # repeated cross-validation: the folds drawn anew (run_dir/repeat-R/…)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialRequest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, as the worker reports it."""

    trial: int
    state: str  # "finished" | "pruned" | "failed"
    dev_error: float | None  # final dev error (None when failed)
    curve: list[float]  # dev error after each epoch (with cv: the mean over folds, see cv.py)
    seconds: float  # wall time in the worker
    error: str | None = None  # failed: the exception, one line
    # real training: {"loss": mean dev loss (ties), "epochs": kept epochs} and, with cv, the
    # folds' figures and "dev_std" (cv.summarize)
    scores: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialOutcome:
        return cls(**json.loads(text))


def run_trial_json(request_json: str) -> str:
    """Worker entry point: run the trial; any exception becomes a failed outcome."""
    request = TrialRequest.from_json(request_json)
    started = time.perf_counter()
    watch = _Watch(build_rule(request.early_stop))
    scores = None
    try:
        if request.objective == "train":
            dev_error, scores = _train(request, watch)
        elif request.objective == "synthetic":
            watch.start_fold()
            dev_error = _synthetic(request, watch)
        else:
            raise ValueError(f"unknown objective {request.objective!r}; one of {OBJECTIVES}")
    except Exception as error:
        return TrialOutcome(
            trial=request.trial,
            state="failed",
            dev_error=None,
            curve=watch.curve(),
            seconds=time.perf_counter() - started,
            error=_one_line(error),
        ).to_json()
    state = "finished" if math.isfinite(dev_error) else "failed"
    return TrialOutcome(
        trial=request.trial,
        state="pruned" if watch.stopped and state == "finished" else state,
        dev_error=dev_error if math.isfinite(dev_error) else None,
        curve=watch.curve(),
        seconds=time.perf_counter() - started,
        error=None if state == "finished" else f"dev error is {dev_error} (diverged)",
        scores=scores,
    ).to_json()


class _Watch:
    """The on_epoch callback: records each fold's dev-error curve and applies the tuner's rule.

    With cross-validation the rule judges each fold's own curve against the reference curves
    (other trials' mean curves); a fold it stops ends the whole trial as pruned."""

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self.curves: list[list[float]] = []
        self.stopped = False

    def start_fold(self) -> None:
        self.curves.append([])

    def __call__(self, record: dict[str, Any]) -> bool:
        curve = self.curves[-1]
        curve.append(float(record["dev_error"]))
        self.stopped = self.rule is not None and self.rule.should_stop(curve)
        return not self.stopped

    def curve(self) -> list[float]:
        if len(self.curves) == 1:
            return self.curves[0]
        from bnserve.training.tune.cv import mean_curve

        return mean_curve(self.curves)


def _train(request: TrialRequest, watch: _Watch) -> tuple[float, dict[str, Any]]:
    from bnserve.training.config import (
        TrainConfig,  # the worker imports training only when it trains
    )
    from bnserve.training.rundir import read_json
    from bnserve.training.train import train
    from bnserve.training.tune.cv import summarize

    config = TrainConfig.from_dict(request.config)
    runs = [(config, request.run_dir)]
    if request.cv is not None:
        runs = [
            (
                config.replace(folds=request.cv, fold=fold, fold_repeat=repeat),
                f"{request.run_dir}/{fold_dir(fold, repeat)}",
            )
            for repeat in range(request.cv_repeats)
            for fold in range(request.cv)
        ]
    metas = []
    for fold_config, run_dir in runs:
        watch.start_fold()
        train(
            fold_config,
            run_dir,
            progress=False,
            checkpoints=request.checkpoints,
            plot=False,
            on_epoch=watch,
        )
        metas.append(read_json(Path(run_dir) / "meta.json"))
        if watch.stopped:
            break
    return summarize(metas, request.cv, request.cv_repeats)


def fold_dir(fold: int, repeat: int) -> str:
    """A fold run's directory inside its trial's: fold-I, or repeat-R/fold-I after the first."""
    return f"fold-{fold}" if repeat == 0 else f"repeat-{repeat}/fold-{fold}"


def synthetic_curve(config: dict[str, Any], epoch: int) -> float:
    """A cheap known objective for the tuner's own tests and benchmarks (no data, no files):
    best at lr = 10^-2.5, β1 = 0.9, batch size 64, improving with epochs like a learning curve.
    """
    lr_term = (math.log10(config["lr"]) + 2.5) ** 2 / 10
    beta_term = (math.log10(1 - config["beta1"]) + 1) ** 2 / 20
    batch_term = abs(math.log2(config["batch_size"]) - 6) / 50
    floor = 0.02 + lr_term + beta_term + batch_term
    return floor + 0.5 * math.exp(-epoch / 3)


def _synthetic(request: TrialRequest, on_epoch: Any) -> float:
    dev_error = math.nan
    for epoch in range(1, int(request.config["epochs"]) + 1):
        dev_error = synthetic_curve(request.config, epoch)
        if on_epoch({"epoch": epoch, "dev_error": dev_error}) is False:
            break
    return dev_error


def _one_line(error: BaseException) -> str:
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    at = f" (at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno})" if where else ""
    return f"{type(error).__name__}: {error}{at}".replace("\n", " ")
