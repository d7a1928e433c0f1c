"""`bnserve tune --cv K`: each trial trains K folds of the train + dev rows (never the test rows).

A trial's dev error is the mean over its folds of each fold's kept dev error; the table shows it
± the standard deviation over folds (sample std, K − 1). Trials with equal means are ranked by
the lower mean dev loss (log loss or MSE), then by trial number. The best trial is retrained on
all train + dev rows (dev_fraction 0, population BN statistics) for the median of its folds'
kept epochs, keeping the mean weights of the last share of them (final_config), into
TUNE_DIR/final, which `best` then points at. `--cv auto`, the default, cross-validates below
AUTO_MAX_ROWS training rows and compares trials on the dev split above; `--cv off` always uses
the dev split. Below SMALL_MAX_ROWS it takes AUTO_FOLDS folds, from there to AUTO_MAX_ROWS
MID_FOLDS (fewer, each fold's dev part is large enough, and each trial costs K trainings).
resolve_validation's line saying which is the tune's first output line.

`--cv-repeats R` draws the folds R times (repeated cross-validation: each drawing its own
stream of the split seed) and averages over all R·K fold runs: with a few hundred rows a fold's
dev part is a few dozen, one row moves its error by a few percent, and one drawing of the folds
ranks trials that differ by a row or two by chance. `auto` (the default) repeats AUTO_REPEATS
times below REPEAT_MAX_ROWS training rows (a fold's dev part under 100 rows at 5 folds).

`--final-members K` retrains the K best trials (final, final-1, …, best first), each with its own
settings, seed and folds' epochs: the tune's model is the mean of their predictions, which
`bnserve export TUNE_DIR` writes as one graph. On a few hundred rows the best trials' CV errors
lie within a fraction of their spread over folds, and one retrain's seed moves the held-out
metric by more than what separates them; the mean of K of them varies less, and each costs one
training of the tune's hundreds. Under squared error the mean's error is the members' mean error
less their spread around it (Krogh and Vedelsby's ambiguity decomposition), never worse than the
average member; accuracy has no such bound, and measured on bench/quality.py's small
classification tables the mean of the best 5 lost a test row on 3 of 12 splits and gained none
(docs/benchmarks.md). So `auto` (the default) takes AUTO_FINAL_MEMBERS for regression below
REPEAT_MAX_ROWS training rows (the rows where the folds are repeated too), else 1.
"""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bnserve.training.config import TrainConfig
from bnserve.training.data.folds import fold_rows
from bnserve.training.data.loading import load_split
from bnserve.training.metrics import LOSS

AUTO_MAX_ROWS = 10_000  # --cv auto: cross-validate when train + dev hold fewer rows than this
SMALL_MAX_ROWS = 3000  # --cv auto: AUTO_FOLDS folds below this many rows, MID_FOLDS from it
AUTO_FOLDS = 5  # --cv auto: this many folds (fewer when the smallest class is smaller)
MID_FOLDS = 3  # --cv auto: this many folds from SMALL_MAX_ROWS to AUTO_MAX_ROWS rows
REPEAT_MAX_ROWS = 500  # --cv-repeats auto: repeat the folds below this many train + dev rows
AUTO_REPEATS = 3  # --cv-repeats auto: that many drawings of the folds
AUTO_FINAL_MEMBERS = 5  # --final-members auto: this many best trials below REPEAT_MAX_ROWS rows
FINAL_RUN = "final"  # the retrained best trial, inside the tune directory (final-1, … after it)


class Validation(NamedTuple):
    """How a tune validates and what it returns, as resolve_validation chose them."""

    folds: int | None  # cross-validation folds, or None: the dev split
    repeats: int  # drawings of the folds
    final_members: int  # best trials retrained (the tune's model is their mean)
    line: str  # what was chosen and why: the tune's first output line


def training_rows(base: TrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """The train + dev row indices of the fixed settings' split, with y and the task."""
    dataset, split = load_split(base)
    rows = np.sort(np.concatenate([split.train, split.dev]))
    return rows, dataset.y, dataset.task


def resolve_validation(
    cv_value: str | None,
    repeats_value: str | None,
    base: TrainConfig,
    members_value: str | None = None,
) -> Validation:
    """--cv, --cv-repeats and --final-members (None: auto) → the Validation, with one line saying
    what was chosen and why (the tune's first output line).

    ValueError for a bad value of any."""
    folds, line = resolve_cv("auto" if cv_value is None else cv_value, base)
    repeats, repeats_line = resolve_repeats(repeats_value, base, folds)
    members, members_line = resolve_final_members(members_value, base, folds)
    if folds is None:
        line += f": trials are compared on the dev split ({base.dev_fraction:.0%} of the rows)"
    said = "; ".join(part for part in (line, repeats_line, members_line) if part)
    return Validation(folds, repeats, members, said)


def resolve_cv(value: str | None, base: TrainConfig) -> tuple[int | None, str]:
    """--cv K | auto | off → (folds or None, a line saying what was chosen).

    ValueError for anything but an integer ≥ 2, "auto" or "off"."""
    if value is None or value == "off":
        return None, "cross-validation: off"
    if value != "auto":
        folds = _whole_number("--cv", value, "a number of folds (≥ 2)")
        if folds < 2:
            raise ValueError(f"--cv {folds}: cross-validation needs at least 2 folds")
        return folds, f"cross-validation: {folds} folds of the train + dev rows"
    rows, y, task = training_rows(base)
    if len(rows) >= AUTO_MAX_ROWS:
        return None, f"cross-validation: off (auto: {len(rows)} training rows ≥ {AUTO_MAX_ROWS})"
    small = len(rows) < SMALL_MAX_ROWS
    folds = AUTO_FOLDS if small else MID_FOLDS
    if task == "classification":
        folds = min(folds, int(np.bincount(y[rows]).min()) if len(rows) else 0)
    if folds < 2:
        return None, "cross-validation: off (auto: a class has fewer than 2 training rows)"
    why = (
        f"{len(rows)} training rows < {SMALL_MAX_ROWS}"
        if small
        else f"{SMALL_MAX_ROWS} ≤ {len(rows)} training rows < {AUTO_MAX_ROWS}"
    )
    return folds, f"cross-validation: {folds} folds (auto: {why})"


def resolve_repeats(value: str | None, base: TrainConfig, folds: int | None) -> tuple[int, str]:
    """--cv-repeats R | auto (None: auto) → (drawings of the folds, a line saying so).

    ValueError for anything but an integer ≥ 1 or "auto", or R > 1 without cross-validation."""
    if value is not None and value != "auto":
        repeats = _whole_number("--cv-repeats", value, "a count (≥ 1)")
        if repeats < 1:
            raise ValueError(f"--cv-repeats {repeats}: must be ≥ 1")
        if repeats > 1 and folds is None:
            raise ValueError(f"--cv-repeats {repeats} repeats cross-validation: it is off")
        return repeats, f"folds drawn {repeats} time(s)"
    if folds is None:
        return 1, ""
    rows = len(training_rows(base)[0])
    if rows >= REPEAT_MAX_ROWS:
        return 1, f"folds drawn once (auto: {rows} training rows ≥ {REPEAT_MAX_ROWS})"
    return AUTO_REPEATS, (
        f"folds drawn {AUTO_REPEATS} times (auto: {rows} training rows < {REPEAT_MAX_ROWS})"
    )


def resolve_final_members(
    value: str | None, base: TrainConfig, folds: int | None
) -> tuple[int, str]:
    """--final-members K | auto (None: auto) → (best trials retrained, a line saying so).

    ValueError for anything but an integer ≥ 1 or "auto", or K > 1 without cross-validation
    (the dev split keeps the chosen trial itself: there is no retrain)."""
    if value is not None and value != "auto":
        members = _whole_number("--final-members", value, "a count (≥ 1)")
        if members < 1:
            raise ValueError(f"--final-members {members}: must be ≥ 1")
        if members > 1 and folds is None:
            raise ValueError(
                f"--final-members {members} retrains after cross-validation: it is off"
            )
        return members, f"the model: the best {members} trial(s) retrained"
    if folds is None:
        return 1, ""
    rows, _, task = training_rows(base)
    if task != "regression" or len(rows) >= REPEAT_MAX_ROWS:
        return 1, ""  # the best trial retrained, as the line about cross-validation implies
    return AUTO_FINAL_MEMBERS, (
        f"the model: the mean of the best {AUTO_FINAL_MEMBERS} trials retrained "
        f"(auto: regression, {len(rows)} training rows < {REPEAT_MAX_ROWS})"
    )


def final_run_name(member: int) -> str:
    """The directory of the retrain of the tune's `member`-th best trial (from 0): final,
    final-1, …"""
    return FINAL_RUN if member == 0 else f"{FINAL_RUN}-{member}"


def _whole_number(flag: str, value: str, expected: str) -> int:
    try:
        return int(value)
    except ValueError:
        extra = ", auto or off" if flag == "--cv" else " or auto"  # --cv-repeats, --final-members
        raise ValueError(f"{flag} {value!r}: expected {expected}{extra}") from None


def check_folds(base: TrainConfig, folds: int) -> None:
    """Build the folds once, so K above a class's count is named before any trial starts."""
    rows, y, task = training_rows(base)
    fold_rows(rows, y, task, folds, base.data_split_seed, source=base.data)


def summarize(
    metas: list[dict[str, Any]], folds: int | None, repeats: int = 1
) -> tuple[float, dict[str, Any]]:
    """A trial's dev error (mean over fold runs) and its scores from each one's meta.json.

    With repeats, the fold figures list every drawing's folds in turn (R·K of them)."""
    task = metas[0]["task"]
    errors = [float(meta["dev_error"]) for meta in metas]
    losses = [float(meta["dev_metrics"][LOSS[task]]) for meta in metas]
    kept = [int(meta["kept_epoch"]) for meta in metas]
    scores: dict[str, Any] = {
        "loss": statistics.fmean(losses),
        "epochs": round(statistics.median(kept)),
    }
    if folds is not None:
        scores.update(
            folds=folds,
            repeats=repeats,
            dev_std=statistics.stdev(errors) if len(errors) > 1 else 0.0,
            fold_dev_errors=errors,
            fold_losses=losses,
            fold_kept_epochs=kept,
        )
    return statistics.fmean(errors), scores


def mean_curve(curves: list[list[float]]) -> list[float]:
    """Per epoch, the mean over folds of each fold's dev error; a stopped fold holds its last."""
    length = max((len(curve) for curve in curves if curve), default=0)
    return [
        statistics.fmean(curve[min(epoch, len(curve) - 1)] for curve in curves if curve)
        for epoch in range(length)
    ]


def final_config(base: TrainConfig, epochs: int, average_share: float) -> TrainConfig:
    """The best trial's settings for all train + dev rows: no dev split, a fixed epoch count.

    Its batch-norm statistics are the exact population ones of the final weights: a fold's kept
    epoch was chosen on dev rows with its EMA statistics, but the retrain has no dev rows to
    catch EMA statistics that lag behind the weights (after a few epochs of a few batches, at a
    high learning rate, they can leave the net predicting one class). It keeps the mean weights
    of its last ⌈average_share·epochs⌉ epochs (none at 0): one seed's last epoch is a noisy
    point of the walk, and no dev rows are left to pick a better one."""
    epochs = max(1, epochs)
    average_epochs = math.ceil(average_share * epochs) if average_share > 0 else None
    return base.replace(
        dev_fraction=0.0,
        early_stopping=None,
        epochs=epochs,
        stats="population",
        average_epochs=average_epochs,
    )


def retrain(out: Path, config: TrainConfig, *, plot: bool, name: str = FINAL_RUN) -> Path:
    """Train `config` into out/name (again from scratch unless a finished one is there)."""
    from bnserve.training.rundir import read_json
    from bnserve.training.train import train

    run_dir = out / name
    meta_path = run_dir / "meta.json"
    if meta_path.exists() and read_json(meta_path).get("status") == "finished":
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    train(config, run_dir, progress=False, checkpoints=False, plot=plot)
    return run_dir


def format_mean_std(mean: float | None, std: float | None) -> str:
    """'0.0312 ± 0.0121' (or just the mean without a std)."""
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"
