"""`bnserve tune`: random search (or a grid) over training hyperparameters, coarse to fine."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from bnserve.flags import flag_of
from bnserve.training.errors import DataError, TrainingError, disk_full, os_error_line
from bnserve.training.flags import add_config_flag
from bnserve.training.tune import cv, report
from bnserve.training.tune.early_stop import RULES
from bnserve.training.tune.errors import SpaceError, TuneError, TuneSettingsError
from bnserve.training.tune.runner import TuneResult, existing_store, run_tune
from bnserve.training.tune.settings import TuneSettings
from bnserve.training.tune.space import (
    DEFAULT_SPACE,
    build_space,
    describe_default_space,
    load_space_file,
    parse_param_flag,
    parse_scalar,
)
from bnserve.training.tune.store import FILENAME, TrialStore, database_failure

# TrainConfig fields with a flag of their own here (any other: --set FIELD=VALUE)
_TRAINING_FLAGS = ("data", "target", "delimiter", "task", "epochs", "class_weight", "metric")
_TRAINING_HELP = {
    "epochs": f"epochs per trial (default: {DEFAULT_SPACE['fixed']['epochs']})",
    "metric": "the dev metric trials are ranked on, as bnserve train (default: error or rmse)",
}

# Flags that define which trials a tune has; a resumed tune keeps its stored values.
_DEFINING_FLAGS = (
    "trials", "rounds", "shrink", "grid", "seed", "early_stop", "grace_epochs", "reduction",
    "compare_batchnorm", "objective", "checkpoints", "space", "param", "set", "cv",
    "cv_repeats", "final_average", "final_members",
    *_TRAINING_FLAGS,
)  # fmt: skip

_EPILOG = """\
scales: linear, int, log (α = 10^r, r uniform), log_int, log1m (1 − β = 10^r), choice.
  --param lr=log:1e-4:1  --param beta1=log1m:0.9:0.999  --param units=log_int:16:256
  --param batch_size=choice:32,64,128,256  --param optimizer=choice:adam,momentum
Without --space or --param the default space searches (--param alone searches only what it
names, with the same fixed settings):
{default_space}

outputs in TUNE_DIR: tune.sqlite (every trial's state), tune.lock (its one writer),
results.csv (best first), best -> the best trial's run directory
(bnserve export TUNE_DIR/best --out best.onnx), best.json, plots/*.png,
trials/trial-NNNN/ (run directories; with --cv, fold-I/ inside each, repeat-R/fold-I/ with
--cv-repeats); with --cv, final/ (the best trial retrained on all train + dev rows, which best
points at) and with --final-members K > 1 final-1/ … final-(K-1)/, the next best trials retrained:
the tune's model is their mean (bnserve export TUNE_DIR --out model.onnx writes the tune's
model, one run or that ensemble).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve tune",
        description="Random search over training hyperparameters, each on its own scale.",
        epilog=_EPILOG.format(default_space=describe_default_space()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="the tune directory")
    parser.add_argument("--resume", action="store_true", help="finish the tune in --out")
    search = parser.add_argument_group("search")
    search.add_argument("--space", type=Path, help="search space file (.toml or .json)")
    search.add_argument(
        "--param", action="append", metavar="NAME=SCALE:LOW:HIGH", help="add a dimension"
    )
    search.add_argument("--trials", type=int, help="total trials over all rounds (default: 20)")
    search.add_argument("--rounds", type=int, help="coarse-to-fine rounds (default: 1)")
    search.add_argument("--shrink", type=float, help="box width kept per round (default: 0.5)")
    search.add_argument("--grid", type=int, metavar="P", help="grid: P values per dimension")
    search.add_argument("--seed", type=int, help="the tune's seed (default: 0)")
    search.add_argument(
        "--compare-batchnorm", action="store_true", help="each point with and without BN"
    )
    search.add_argument(
        "--early-stop",
        choices=list(RULES),
        help="stop hopeless trials: median rule, or successive halving (default: none)",
    )
    search.add_argument(
        "--grace-epochs", type=int, help="epochs before any stop; halving's first rung (default: 3)"
    )
    search.add_argument(
        "--reduction",
        type=int,
        help="halving: η, rungs at grace·η^k each keep the best 1/η of trials (default: 3)",
    )
    search.add_argument(
        "--cv",
        metavar="K|auto|off",
        help="score each trial by K-fold cross-validation of the train + dev rows (test rows "
        f"untouched) and retrain the best on all of them; auto: {cv.AUTO_FOLDS} folds below "
        f"{cv.SMALL_MAX_ROWS} training rows, {cv.MID_FOLDS} below {cv.AUTO_MAX_ROWS}, the dev "
        "split above; off: the dev split (default: auto)",
    )
    search.add_argument(
        "--cv-repeats",
        metavar="R|auto",
        help="--cv: draw the folds R times and score each trial over all R·K fold runs; auto: "
        f"{cv.AUTO_REPEATS} below {cv.REPEAT_MAX_ROWS} training rows, else 1 (default: auto)",
    )
    search.add_argument(
        "--final-average",
        type=float,
        metavar="SHARE",
        help="--cv: the retrain keeps the mean weights (then their population BN statistics) "
        "of this share of its last epochs; 0: its last epoch's (default: 0.5)",
    )
    search.add_argument(
        "--final-members",
        metavar="K|auto",
        help="--cv: retrain the K best trials on all train + dev rows (final, final-1, …); the "
        "tune's model is the mean of their predictions, one graph with bnserve export TUNE_DIR; "
        f"auto: {cv.AUTO_FINAL_MEMBERS} for regression below {cv.REPEAT_MAX_ROWS} training rows, "
        "else 1 (default: auto)",
    )
    search.add_argument(
        "--objective",
        choices=["train", "synthetic"],
        help="synthetic: a cheap known function, to test or benchmark the tuner itself",
    )
    training = parser.add_argument_group("every trial's training settings")
    for name in _TRAINING_FLAGS:  # as bnserve train's, from TrainConfig's fields
        add_config_flag(training, name, help_text=_TRAINING_HELP.get(name))
    training.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="any other TrainConfig field"
    )
    training.add_argument(
        "--checkpoints", action="store_true", help="keep per-epoch checkpoints in each trial"
    )
    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, help="trials at once (default: one per core)")
    run.add_argument("--ray-address", help="run on a Ray cluster: HOST:PORT, auto or local")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="no plots/*.png")
    run.add_argument("--show", type=int, default=10, help="table rows to print (default: 10)")
    return parser


def _fixed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    fixed: dict[str, Any] = {}
    for flag in args.set or []:
        name, sep, value = flag.partition("=")
        if not sep or not name.strip():
            raise SpaceError(f"--set {flag!r}: expected FIELD=VALUE")
        name = name.strip()
        fixed[name] = value if name == "hidden" else parse_scalar(value)  # hidden: "64,64"
    for name in _TRAINING_FLAGS:
        if getattr(args, name) is not None:
            fixed[name] = getattr(args, name)
    return fixed


def _space_document(args: argparse.Namespace) -> dict[str, Any]:
    if args.space is not None:
        document = load_space_file(args.space)
    elif args.param:
        document = {"fixed": dict(DEFAULT_SPACE["fixed"]), "search": {}}
    else:
        document = {key: dict(value) for key, value in DEFAULT_SPACE.items()}
    search = dict(document["search"])
    for flag in args.param or []:
        name, spec = parse_param_flag(flag)
        search[name] = spec
    return {"fixed": {**document["fixed"], **_fixed_overrides(args)}, "search": search}


def new_settings(args: argparse.Namespace) -> TuneSettings:
    space = _space_document(args)
    folds, repeats, members = None, None, None
    if args.objective == "synthetic":
        if args.cv not in (None, "off") or args.cv_repeats is not None or args.final_members:
            raise TuneSettingsError("--cv trains folds of the data: not with --objective synthetic")
    else:  # the validation from the row count unless --cv says (the first line says which)
        try:
            base = build_space(space).base_config()
            folds, repeats, members, line = cv.resolve_validation(
                args.cv, args.cv_repeats, base, args.final_members
            )
        except DataError:  # a bad file, named
            raise
        except ValueError as error:
            raise TuneSettingsError(str(error)) from None
        print(line, flush=True)
    given: dict[str, Any] = {
        "out": args.out,
        "space": space,
        "cv": folds,
        "cv_repeats": repeats,
        "final_average": args.final_average,
        "final_members": members,
        "trials": args.trials,
        "rounds": args.rounds,
        "shrink": args.shrink,
        "grid_points": args.grid,
        "seed": args.seed,
        "early_stop": args.early_stop,
        "grace_epochs": args.grace_epochs,
        "reduction": args.reduction,
        "compare_batchnorm": args.compare_batchnorm,
        "objective": args.objective,
        "checkpoints": args.checkpoints,
        **_runtime(args),
    }
    return TuneSettings(**{name: value for name, value in given.items() if value is not None})


def _runtime(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a resumed tune may change (settings.RUNTIME_FIELDS)."""
    return {
        "workers": args.workers,
        "ray_address": args.ray_address,
        "progress": not args.no_progress,
        "plots": not args.no_plots,
        "show": args.show,
    }


def resumed_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TuneSettings:
    defaults = parser.parse_args(["--out", str(args.out)])
    changed = [name for name in _DEFINING_FLAGS if getattr(args, name) != getattr(defaults, name)]
    if changed:
        flags = ", ".join(flag_of(name) for name in changed)
        raise TuneError(f"--resume keeps the tune's stored settings: drop {flags}")
    with TrialStore(existing_store(args.out), readonly=True) as store:
        stored = store.settings()
    runtime = _runtime(args)
    if runtime["workers"] is None:  # keep the stored worker count
        runtime.pop("workers")
    return TuneSettings.from_dict({**stored, **runtime, "out": str(args.out)})


def report_results(settings: TuneSettings, result: TuneResult) -> None:
    """Print the table (best first); write results.csv, the `best` link and the plots."""
    space = settings.search_space()
    names = space.names() + (["batchnorm"] if settings.compare_batchnorm else [])
    rows = report.result_rows(result.ranked, names)
    report.write_csv(settings.out / report.CSV_NAME, rows)
    print(report.format_table(rows, settings.show))
    counts = {
        state: sum(r.state == state for r in result.ranked)
        for state in ("finished", "pruned", "failed")
    }
    print(", ".join(f"{count} {state}" for state, count in counts.items()))
    print(f"results: {settings.out / report.CSV_NAME}")
    best = result.best
    if best is not None:
        link = report.link_best(settings.out, best, result.final_runs)
        where = f" → {link} (bnserve export {link} --out best.onnx)" if link else ""
        scores = best.scores or {}
        if settings.cv is not None:
            error = cv.format_mean_std(best.dev_error, scores.get("dev_std"))
            print(
                f"best: trial {best.trial}, dev error {error} over {settings.cv} folds; "
                f"retrained on all train + dev rows for {scores.get('epochs')} epochs{where}"
            )
            if len(result.final_runs) > 1:
                retrains = ", ".join(run.name for run in result.final_runs)
                print(
                    f"the tune's model: the mean of the best {len(result.final_runs)} trials "
                    f"retrained ({retrains}): bnserve export {settings.out} --out model.onnx"
                )
        else:
            print(f"best: trial {best.trial}, dev error {best.dev_error:.4g}{where}")
    if settings.plots and result.ranked:
        from bnserve.training.tune.plots import write_plots  # matplotlib only when plotting

        paths = write_plots(
            settings.out,
            space,
            result.rounds,
            result.ranked,
            compare_batchnorm=settings.compare_batchnorm,
        )
        print("plots: " + ", ".join(str(path) for path in paths))


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resumed_settings(args, parser) if args.resume else new_settings(args)
        result = run_tune(
            settings, resume=args.resume, report=lambda ended: report_results(settings, ended)
        )
    except TrainingError as error:  # SpaceError, TuneSettingsError, TuneError, DataError, …
        print(f"bnserve tune: error: {error}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as error:
        print(
            f"bnserve tune: error: {database_failure(args.out / FILENAME, error)}", file=sys.stderr
        )
        return 2
    except OSError as error:
        what = f"{args.out}: cannot write the tune directory: {os_error_line(error)}"
        if disk_full(error):
            what = (
                f"{args.out}: the tune stopped, {os_error_line(error)}; every trial recorded in "
                f"{FILENAME} stays; make room, then bnserve tune --resume --out {args.out}"
            )
        print(f"bnserve tune: error: {what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bnserve tune: interrupted; finish with --resume --out {args.out}", file=sys.stderr)
        return 130
    return 0 if result.best is not None else 1
