"""`bnserve train` / `python -m bnserve.training`: parse options into a TrainConfig, run train()."""

from __future__ import annotations

import argparse
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

from bnserve.flags import flag_of
from bnserve.training.config import RESUMABLE_FIELDS, TrainConfig
from bnserve.training.errors import TrainingError, disk_full, os_error_line
from bnserve.training.flags import CONFIG_FIELDS, add_config_flag, default_text
from bnserve.training.rundir import read_json

BN_EPILOG = """\
batch-norm running statistics (frozen for test time):
  running_mean = (1 − m)·running_mean + m·batch_mean
  running_var  = (1 − m)·running_var  + m·batch_var·n/(n − 1)    (n/(n − 1) only when unbiased)
  m is --bn-momentum (PyTorch BatchNorm1d convention, default {bn_momentum}). --bn-decay d is the
  Keras/TensorFlow convention for the same thing, m = 1 − d: --bn-decay 0.9 ≡ --bn-momentum 0.1.
  Normalization during training uses the batch mean and the biased (1/n) batch variance.
  A last mini-batch of one example is merged into the previous batch.

{babysitting}

early stopping: --early-stopping P ends the run after P epochs in a row whose dev error did not
  beat the best by more than --min-delta (an equal dev error with a lower dev loss counts as
  better); params.npz then holds the best epoch's weights and running statistics (meta.json
  "kept_epoch", history.json "kept": true, a star on the plot).
"""


def _epilog() -> str:
    """BN_EPILOG with the default momentum and the settings a resumed run may change."""
    babysitting = textwrap.fill(
        "babysitting: --resume RUN_DIR continues from the last checkpoint; "
        + ", ".join(map(flag_of, RESUMABLE_FIELDS))
        + " given with it apply from the next epoch (history.json records them per epoch); "
        "--from-epoch K goes back to checkpoint K first, discarding later ones.",
        width=95,
        subsequent_indent="  ",
        break_on_hyphens=False,
    )
    return BN_EPILOG.format(bn_momentum=default_text("bn_momentum"), babysitting=babysitting)


# TrainConfig's field groups (config.py `group=`) as --help sections, in this order
CONFIG_SECTIONS = {
    "data": "data",
    "columns": "columns (of a CSV or Parquet table; COLS: comma-separated names)",
    "network": "network",
    "batch norm": "batch norm (see the formula below)",
    "optimization": "optimization",
}


def build_parser() -> argparse.ArgumentParser:
    """The `bnserve train` options; every config option defaults to None (meaning: not given)."""
    parser = argparse.ArgumentParser(
        prog="bnserve train",
        description="Train an MLP with batch normalization (numpy) into a run directory.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=None,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="new run directory to create")
    where.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run")
    parser.add_argument("--from-epoch", type=int, metavar="K", help="with --resume: restart at K")
    sections = {group: parser.add_argument_group(title) for group, title in CONFIG_SECTIONS.items()}
    # --bn-momentum and --bn-decay state the same thing in two conventions: one of them at most
    momentum = sections["batch norm"].add_mutually_exclusive_group()
    for name, setting in CONFIG_FIELDS.items():
        group = setting.metadata["group"]
        add_config_flag(momentum if name == "bn_momentum" else sections[group], name)
    momentum.add_argument(
        "--bn-decay",
        type=float,
        help="Keras-style weight of the OLD running value (= 1 − momentum)",
    )
    sections["columns"].add_argument(
        "--describe",
        action="store_true",
        help="print the schema the training rows give the columns, then exit (no --out needed)",
    )
    sections["data"].add_argument(
        "--cache-dir",
        help="float32 cache of CSV/Parquet data ('off': read into memory; default: "
        "$BNSERVE_CACHE_DIR, else ~/.cache/bnserve/data)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--no-checkpoints", action="store_true", help="no per-epoch checkpoints")
    out.add_argument("--no-plot", action="store_true", help="no learning_curve.png")
    out.add_argument(
        "--blas-threads", type=int, help="BLAS threads (default: by the size of the matrices)"
    )
    return parser


# every TrainConfig field has an option of the same name (tests check it)
CONFIG_OPTIONS = list(CONFIG_FIELDS)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields set on the command line (--bn-decay d becomes bn_momentum 1 − d)."""
    values = {
        name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name) is not None
    }
    if args.bn_decay is not None:
        if not 0 <= args.bn_decay < 1:
            raise ValueError(f"--bn-decay {args.bn_decay!r} is invalid: must be in [0, 1)")
        values["bn_momentum"] = momentum_of_decay(args.bn_decay)
    return values


def momentum_of_decay(decay: float) -> float:
    """1 − decay in decimal, as the user wrote it: 0.9 → 0.1 (not 0.09999999999999998)."""
    return float(Decimal(1) - Decimal(repr(decay)))


KERAS_LIKE_MOMENTUM = 0.9  # --bn-momentum at or above this is most likely a Keras decay


def momentum_warning(bn_momentum: float | None) -> str | None:
    """The porting mistake of README's batch-norm conventions, or None."""
    if bn_momentum is None or bn_momentum < KERAS_LIKE_MOMENTUM:
        return None
    return (
        f"--bn-momentum {bn_momentum:g} gives the NEW batch weight {bn_momentum:g} (PyTorch "
        "convention), so the frozen statistics are little more than the last mini-batch's; "
        f"a Keras/TensorFlow momentum of {bn_momentum:g} is --bn-decay {bn_momentum:g} "
        f"(= --bn-momentum {momentum_of_decay(bn_momentum):g})"
    )


def _write_failure(error: OSError, run_dir: Path) -> str:
    """What a failed write left (whole files only) and how to go on."""
    if not disk_full(error):  # a file where a directory should be, no permission, …
        return f"{run_dir}: cannot write the run directory: {os_error_line(error)}"
    if (run_dir / "config.json").is_file():
        then = f"continue with: bnserve train --resume {run_dir}"
    else:
        then = "run the same command again"
    return (
        f"{run_dir}: training stopped, {os_error_line(error)}; every file already in the run "
        f"directory is whole (checkpoints included); make room, then {then}"
    )


def _describe(args: argparse.Namespace) -> int:
    """--describe: the schema of the training rows, one line per column; nothing is trained."""
    from bnserve.training.train import prepare

    try:
        config = TrainConfig.from_dict(given_settings(args))
        prepared = prepare(config, cache_dir=args.cache_dir)
    except (TrainingError, ValueError) as error:
        print(f"bnserve train: error: {error}", file=sys.stderr)
        return 2
    assert prepared.schema is not None
    for line in prepared.schema.describe_lines():
        print(line)
    return 0


def _column_lines(run_dir: Path, meta: dict[str, Any]) -> list[str]:
    """The run's columns, one line per kind, and the unseen levels met (tables that have a
    schema.json: text columns, gaps or columns left out)."""
    from bnserve.training.data.schema import TableSchema

    if not (run_dir / "schema.json").is_file():
        return []
    schema = TableSchema.from_dict(read_json(run_dir / "schema.json"))
    lines = [f"columns: {line}" for line in schema.summary_lines()]
    for part, counts in (meta.get("unseen_levels") or {}).items():
        met = {name: count for name, count in counts.items() if count}
        if met:
            shown = ", ".join(f"{name} {count}" for name, count in met.items())
            lines.append(f"levels never seen in training, scored as other: {part} rows: {shown}")
    return lines


def main(argv: list[str]) -> int:
    """Run `bnserve train ARGS`: 0 when done, else 2 with one error line (README: Exit codes)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.describe:
        return _describe(args)
    if args.out is None and args.resume is None:
        parser.error("one of the arguments --out --resume is required")
    if args.from_epoch is not None and args.resume is None:
        parser.error("--from-epoch needs --resume RUN_DIR")
    from bnserve.training.train import train  # after parsing: --help stays fast

    run_dir = args.resume if args.resume is not None else args.out
    try:
        settings = given_settings(args)
        if warning := momentum_warning(args.bn_momentum):
            print(f"bnserve train: warning: {warning}", file=sys.stderr)
        if args.resume is not None:
            stored = read_json(args.resume / "config.json")
            config = TrainConfig.from_dict({**stored, **settings})
        else:
            config = TrainConfig.from_dict(settings)
        result = train(
            config,
            run_dir,
            resume=args.resume is not None,
            progress=not args.no_progress,
            checkpoints=not args.no_checkpoints,
            plot=not args.no_plot,
            from_epoch=args.from_epoch,
            cache_dir=args.cache_dir,
            blas_threads=args.blas_threads,
        )
    except (TrainingError, ValueError) as error:
        print(f"bnserve train: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, most likely: every file is written atomically
        print(f"bnserve train: error: {_write_failure(error, run_dir)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnserve train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    meta = read_json(result.run_dir / "meta.json")
    for line in _column_lines(result.run_dir, meta):
        print(line)
    if meta["split"]["test_rows"] == 0:
        metric = "no test rows"
    elif meta["task"] == "classification":
        metric = f"test accuracy {meta['test_accuracy']:.4f}"
    else:
        metric = f"test RMSE {meta['test_rmse']:.6g}"
    if result.dev_error is None:
        dev = "no dev rows"
    elif config.metric is not None:
        dev = f"dev {config.metric} {meta['dev_metrics'][config.metric]:.4f}"
    else:
        dev = f"dev error {result.dev_error:.4f}"
    kept = f" (kept epoch {result.kept_epoch})" if config.early_stopping is not None else ""
    print(
        f"run {result.run_dir} ({meta['run_id']}): {meta['epochs_trained']} epochs{kept}, "
        f"{dev}, {metric}"
    )
    return 0
