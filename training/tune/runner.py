"""The coordinator: plans rounds, hands trials to the executor, records every end in SQLite.

Only this process writes the tune's SQLite file. A round's points are sampled and stored before
any of its trials run, so a resumed tune runs exactly the trials an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bnserve.training.config import task_mismatch
from bnserve.training.tune import cv, sampler
from bnserve.training.tune.errors import TuneError
from bnserve.training.tune.executors import Executor, make_executor
from bnserve.training.tune.lock import LOCK_NAME, TuneLock
from bnserve.training.tune.settings import RUNTIME_FIELDS, TuneSettings, with_defaults
from bnserve.training.tune.space import SearchSpace
from bnserve.training.tune.store import (
    FILENAME,
    NEW_FILENAME,
    PlannedTrial,
    TrialRecord,
    TrialStore,
)
from bnserve.training.tune.trials import TrialOutcome, TrialRequest

MIN_REFERENCE = 4  # early stopping waits for this many ended trials to compare with


@dataclass(frozen=True)
class TuneResult:
    """What a tune ended with: every trial best first, and where it lives."""

    out: Path
    ranked: list[TrialRecord]  # finished by dev error, then pruned, then failed
    rounds: list[tuple[int, sampler.Box]]  # each round's box, first round first
    # --cv: the best trials retrained on all train + dev rows (final, final-1, …, best first);
    # the tune's model is the mean of their predictions
    final_runs: tuple[Path, ...] = ()

    @property
    def best(self) -> TrialRecord | None:
        return self.ranked[0] if self.ranked and self.ranked[0].state == "finished" else None

    @property
    def final_run(self) -> Path | None:
        """The best trial's retrain: what `best` points at."""
        return self.final_runs[0] if self.final_runs else None


def open_tune(settings: TuneSettings, *, resume: bool) -> TrialStore:
    """Create the tune directory and store, or reopen one to resume (same settings required)."""
    path = settings.out / FILENAME
    if resume:
        store = TrialStore(existing_store(settings.out))
        ignored = (*RUNTIME_FIELDS, "out")  # the directory may be reached by another path
        stored = {k: v for k, v in with_defaults(store.settings()).items() if k not in ignored}
        given = {k: v for k, v in settings.to_dict().items() if k not in ignored}
        if stored != given:
            store.close()
            changed = sorted(k for k in given if stored.get(k) != given[k])
            raise TuneError(f"{settings.out}: cannot resume with different {', '.join(changed)}")
        return store
    if _entries(settings.out) - {LOCK_NAME, NEW_FILENAME}:
        raise TuneError(
            f"{settings.out}: already exists and is not empty (use --resume or a new --out)"
        )
    return TrialStore.create(path, settings.to_dict())


def run_tune(
    settings: TuneSettings,
    *,
    resume: bool = False,
    report: Callable[[TuneResult], None] | None = None,
) -> TuneResult:
    """Run (or finish) every round of the tune and return its trials best first.

    Everything is validated (space, settings, Ray address) before any trial starts. `report`
    (results.csv, the best link, plots) runs while this process still holds the tune's lock.
    """
    space = settings.search_space()
    if settings.objective == "train":
        _check_data(space, settings)
    created = not settings.out.exists()
    lock = lock_tune_dir(settings, resume=resume)
    try:
        result = _run_locked(settings, space, resume=resume)
        if report is not None:
            report(result)
        return result
    except BaseException:
        if created and _entries(settings.out) <= {LOCK_NAME}:  # refused before it began
            (settings.out / LOCK_NAME).unlink(missing_ok=True)
            settings.out.rmdir()
        raise
    finally:
        lock.release()


def existing_store(out: Path) -> Path:
    """The SQLite file of the tune in `out`, to resume; TuneError when there is none."""
    path = out / FILENAME
    if not path.exists():
        raise TuneError(f"{out}: no {FILENAME} to resume (start it without --resume)")
    return path


def _entries(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()} if directory.is_dir() else set()


def lock_tune_dir(settings: TuneSettings, *, resume: bool) -> TuneLock:
    """Take (and return) the tune directory's one-writer lock; creates a new tune's directory.

    A directory that holds other things and no tune is refused untouched; a tune another live
    process is running is refused with that process's pid, before anything is written.
    """
    out = settings.out
    if resume:
        existing_store(out)
    if not resume and _entries(out) - {LOCK_NAME, NEW_FILENAME} and not (out / FILENAME).exists():
        raise TuneError(f"{out}: already exists and is not empty (use a new --out)")
    out.mkdir(parents=True, exist_ok=True)
    lock = TuneLock(out)
    lock.acquire()  # TuneLocked (a TuneError) names the live holder
    return lock


def _run_locked(settings: TuneSettings, space: SearchSpace, *, resume: bool) -> TuneResult:
    executor = make_executor(_worker_count(settings), settings.ray_address)
    try:
        with open_tune(settings, resume=resume) as store:
            requeued = store.requeue_interrupted()
            if requeued:
                print(f"resuming: rerunning interrupted trial(s) {requeued}", file=sys.stderr)
            total = planned_trial_count(settings, space)
            done = sum(record.state not in ("pending", "running") for record in store.trials())
            with tqdm(
                total=total,
                initial=done,
                desc="tune",
                unit="trial",
                file=sys.stderr,
                disable=not settings.progress,
                dynamic_ncols=True,
            ) as bar:
                for round_index, round_size in enumerate(round_plan(settings, space)):
                    ensure_round_planned(store, settings, space, round_index, round_size)
                    _run_pending(store, settings, space, executor, round_index, bar)
            rounds = [(index, sampler.Box.from_dict(box)) for index, box in store.rounds()]
            result = TuneResult(settings.out, rank_trials(store.trials()), rounds)
        if settings.cv is not None and result.best is not None:
            result = _retrain_best(settings, space, result)
    except BaseException:  # Ctrl-C included: do not wait for running trials (--resume reruns)
        executor.close(wait=False)
        raise
    executor.close()
    return result


def _check_data(space: SearchSpace, settings: TuneSettings) -> None:
    """Load the data once here, so a bad file, fold count or metric is named before any trial."""
    from bnserve.training.data.loading import load_dataset
    from bnserve.training.data.targets import check_class_counts
    from bnserve.training.metrics import check_metric, default_metric

    config = space.base_config()
    dataset = load_dataset(
        config.data,
        target=config.target,
        task=config.task,
        delimiter=config.delimiter,
        na_values=config.na_values,
        drop_missing_target=config.drop_missing_target,
    )
    if dataset.task == "classification":
        labeled = dataset.y if dataset.labeled is None else dataset.y[dataset.labeled]
        check_class_counts(labeled, dataset.class_names or [], dataset.source)
    try:
        check_metric(config.metric or default_metric(dataset.task), dataset.task)
    except ValueError as error:
        raise TuneError(f"--metric: {error}") from None
    mismatch = task_mismatch(config, dataset.task)
    if mismatch is not None:
        raise TuneError(mismatch)
    if settings.cv is not None:
        cv.check_folds(config, settings.cv)
    elif config.dev_fraction == 0:
        raise TuneError("trials are compared on their dev rows: dev_fraction 0 needs --cv")


def _retrain_best(settings: TuneSettings, space: SearchSpace, result: TuneResult) -> TuneResult:
    """--cv: train each of the final_members best finished trials' settings on every train +
    dev row, for the median of its folds' kept epochs (final, final-1, …, best first)."""
    finished = [record for record in result.ranked if record.state == "finished"]
    runs = []
    for member, record in enumerate(finished[: settings.final_members]):
        assert record.scores is not None
        config = space.config_for(record.params, seed=record.seed)
        final = cv.final_config(config, int(record.scores["epochs"]), settings.final_average)
        name = cv.final_run_name(member)
        plot = settings.plots and member == 0
        runs.append(cv.retrain(settings.out, final, plot=plot, name=name))
    return dataclasses.replace(result, final_runs=tuple(runs))


def _worker_count(settings: TuneSettings) -> int | None:
    if settings.workers is not None or settings.ray_address:
        return settings.workers
    return max(1, len(_available_cores()))


def _available_cores() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def round_plan(settings: TuneSettings, space: SearchSpace) -> list[int]:
    """Points per round."""
    if settings.grid_points is not None:
        return [len(sampler.grid_points(space, settings.grid_points))]
    points = settings.trials // 2 if settings.compare_batchnorm else settings.trials
    return sampler.round_sizes(points, settings.rounds)


def planned_trial_count(settings: TuneSettings, space: SearchSpace) -> int:
    return sum(round_plan(settings, space)) * (2 if settings.compare_batchnorm else 1)


def ensure_round_planned(
    store: TrialStore,
    settings: TuneSettings,
    space: SearchSpace,
    round_index: int,
    n_points: int,
) -> None:
    """Sample and store a round's trials as pending, unless a previous run already did."""
    rounds = dict(store.rounds())
    if round_index in rounds:
        return
    existing = store.trials()
    first_point = 1 + max((record.point for record in existing), default=-1)
    first_trial = len(existing)
    if round_index == 0:
        box = sampler.full_box(space)
    else:
        ranked = [r.params for r in rank_trials(existing) if r.state == "finished"]
        if not ranked:
            raise TuneError(
                f"round {round_index}: no trial of the earlier rounds finished, "
                "so there is no best point to shrink the box around (see results.csv errors)"
            )
        previous = sampler.Box.from_dict(rounds[round_index - 1])
        box = sampler.shrink_box(space, previous, ranked, settings.shrink)
    if settings.grid_points is not None:
        points = sampler.grid_points(space, settings.grid_points)
    else:
        points = [
            sampler.sample_point(space, box, sampler.point_rng(settings.seed, first_point + i))
            for i in range(n_points)
        ]
    planned: list[PlannedTrial] = []
    variants = [{"batchnorm": True}, {"batchnorm": False}] if settings.compare_batchnorm else [{}]
    for offset, point in enumerate(points):
        for variant in variants:
            trial = first_trial + len(planned)
            params = {**point, **variant}
            planned.append(
                PlannedTrial(
                    trial=trial,
                    point=first_point + offset,
                    params=params,
                    seed=sampler.trial_seed(settings.seed, first_point + offset),
                    run_dir=f"trials/trial-{trial:04d}",
                )
            )
    store.add_round(round_index, box.to_dict(), planned)


def _run_pending(
    store: TrialStore,
    settings: TuneSettings,
    space: SearchSpace,
    executor: Executor,
    round_index: int,
    bar: tqdm,
) -> None:
    """Run the round's pending trials, at most `executor.slots` at once, recording each end."""
    pending = [r for r in store.trials(round_index=round_index) if r.state == "pending"]
    in_flight: dict[Future[str], TrialRecord] = {}
    lost_once: set[int] = set()
    while pending or in_flight:
        while pending and len(in_flight) < executor.slots:
            record = pending.pop(0)
            request = _request_for(store, settings, space, record)
            store.mark_running(record.trial)
            in_flight[executor.submit(request.to_json())] = record
        done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
        for future in done:
            record = in_flight.pop(future)
            try:
                outcome = TrialOutcome.from_json(future.result())
            except Exception as error:  # the worker process died (e.g. OOM-killed) or Ray lost it
                if record.trial not in lost_once:  # once more; a trial that kills twice fails
                    lost_once.add(record.trial)
                    store.mark_pending(record.trial)
                    pending.insert(0, record)
                    bar.write(
                        f"trial {record.trial}: worker lost, running it again ({error})",
                        file=sys.stderr,
                    )
                    continue
                outcome = _lost(record, error)
            store.mark_done(
                record.trial,
                state=outcome.state,
                dev_error=outcome.dev_error,
                history=outcome.curve,
                seconds=outcome.seconds,
                error=outcome.error,
                scores=outcome.scores,
            )
            bar.update(1)
            if outcome.state == "failed":
                bar.write(f"trial {record.trial} failed: {outcome.error}", file=sys.stderr)


def _request_for(
    store: TrialStore, settings: TuneSettings, space: SearchSpace, record: TrialRecord
) -> TrialRequest:
    run_dir = settings.out.resolve() / record.run_dir
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed attempt's leftovers; rerun from scratch
    early_stop = None
    if settings.early_stop != "none":
        early_stop = {
            "rule": settings.early_stop,
            "reference_curves": _reference_curves(store, record),
            "grace_epochs": settings.grace_epochs,
            "min_reference": MIN_REFERENCE,
        }
        if settings.early_stop == "halving":
            early_stop["reduction"] = settings.reduction
    config = space.config_for(record.params, seed=record.seed).to_dict()
    if config["data"] != "digits":  # workers (Ray's especially) may run in another directory
        config["data"] = str(Path(config["data"]).resolve())
    return TrialRequest(
        trial=record.trial,
        config=config,
        run_dir=str(run_dir),
        objective=settings.objective,
        checkpoints=settings.checkpoints,
        early_stop=early_stop,
        cv=settings.cv,
        cv_repeats=settings.cv_repeats,
    )


def _reference_curves(store: TrialStore, record: TrialRecord) -> list[list[float]]:
    """Curves of ended trials that share this trial's batch-norm setting (if it varies)."""
    return [
        other.history
        for other in store.trials()
        if other.state in ("finished", "pruned")
        and other.params.get("batchnorm") == record.params.get("batchnorm")
    ]


def _lost(record: TrialRecord, error: Exception) -> TrialOutcome:
    return TrialOutcome(
        trial=record.trial,
        state="failed",
        dev_error=None,
        curve=[],
        seconds=0.0,
        error=f"worker lost twice: {type(error).__name__}: {error}",
    )


def rank_trials(records: list[TrialRecord]) -> list[TrialRecord]:
    """Best first: finished by dev error, then pruned by dev error, then failed and unfinished.

    Equal dev errors (one dev row apart is common on small data) go to the lower mean dev loss
    (log loss or MSE), then to the earlier trial."""
    order = {"finished": 0, "pruned": 1, "failed": 2, "running": 3, "pending": 4}

    def key(record: TrialRecord) -> tuple[Any, ...]:
        error = record.dev_error if record.dev_error is not None else float("inf")
        loss = (record.scores or {}).get("loss", float("inf"))
        loss = loss if loss is not None and math.isfinite(loss) else float("inf")
        return (order[record.state], error, loss, record.trial)

    return sorted(records, key=key)
