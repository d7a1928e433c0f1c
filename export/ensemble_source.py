"""Which runs a tune directory offers as ensemble members (`bnserve export TUNE_DIR --ensemble K`),
and what the tune's own model is (`bnserve export TUNE_DIR`).

The one place the exporter reads a tune directory; what it relies on (docs/export.md,
"Ensembles"), all of it the tuner's own code, not a copy of its layout:

- `tune.sqlite` (`training.tune.store.FILENAME`), read-only through `TrialStore`;
- the ranking `training.tune.runner.rank_trials` (finished trials first, by dev error, then loss);
- each trial's `run_dir`, relative to the tune directory; a cross-validated trial's fold runs
  inside it at `training.tune.trials.fold_dir(fold, repeat)`;
- `best.json`'s `final_members` (the best trials' retrains, relative to the tune directory)
  and the `best` link (`training.tune.report.BEST_LINK`), for the tune's model.

The members: the chosen (best) trial's fold runs when it kept them (cross-validation: the fold
models of the chosen configuration, repeat 0's folds first), else the best K finished trials.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bnserve.export.errors import ExportError
from bnserve.training.rundir import read_json

META = "meta.json"


@dataclass(frozen=True)
class EnsembleMembers:
    """The run directories to average, and one line saying how they were chosen."""

    run_dirs: tuple[Path, ...]
    source: str


def is_tune_dir(path: Path) -> bool:
    from bnserve.training.tune.store import FILENAME

    return (path / FILENAME).is_file()


def _finished(run_dir: Path) -> bool:
    meta = run_dir / META
    if not meta.is_file():
        return False
    try:
        return bool(read_json(meta).get("status") == "finished")
    except (OSError, ValueError):
        return False


def _fold_runs(trial_dir: Path) -> list[Path]:
    """The trial's finished fold runs in the tuner's order (repeat 0's folds, then repeat 1's…)."""
    from bnserve.training.tune.trials import fold_dir

    runs: list[Path] = []
    for repeat in range(1000):
        folds = []
        for fold in range(1000):
            candidate = trial_dir / fold_dir(fold, repeat)
            if not candidate.is_dir():
                break
            folds.append(candidate)
        if not folds:
            break
        runs += [run for run in folds if _finished(run)]
    return runs


def tune_model(tune_dir: Path) -> EnsembleMembers | Path:
    """The tune's model: the mean of best.json's `final_members` when it lists more than one
    (the best trials retrained on all train + dev rows), else the one run `best` points at.
    ExportError when the tune has no best.json (it has not finished)."""
    from bnserve.training.tune.report import BEST_LINK

    summary = tune_dir / "best.json"
    if not summary.is_file():
        raise ExportError(f"{tune_dir}: no best.json: the tune has not finished, nothing to export")
    try:
        names = read_json(summary).get("final_members") or []
    except (OSError, ValueError) as error:
        raise ExportError(f"{summary}: not readable ({error})") from None
    if len(names) < 2:
        return tune_dir / BEST_LINK
    runs = tuple(tune_dir / str(name) for name in names)
    missing = [str(run) for run in runs if not _finished(run)]
    if missing:
        raise ExportError(f"{summary}: final member(s) {missing} are not finished runs")
    return EnsembleMembers(
        runs, f"{tune_dir}: the tune's model, its best {len(runs)} trials retrained"
    )


def tune_members(tune_dir: Path, k: int) -> EnsembleMembers:
    """K members from a tune directory (see the module docstring); ExportError when it holds
    fewer than K."""
    from bnserve.training.tune.runner import rank_trials
    from bnserve.training.tune.store import FILENAME, TrialStore

    try:
        with TrialStore(tune_dir / FILENAME, readonly=True) as store:
            ranked = rank_trials(store.trials())
    except sqlite3.DatabaseError as error:
        raise ExportError(
            f"{tune_dir / FILENAME}: not a readable tune database ({error})"
        ) from None
    finished = [record for record in ranked if record.state == "finished"]
    if not finished:
        raise ExportError(f"{tune_dir}: no finished trial to take ensemble members from")
    best = finished[0]
    folds = _fold_runs(tune_dir / best.run_dir)
    if folds:
        if len(folds) < k:
            raise ExportError(
                f"{tune_dir}: the chosen trial {best.trial} kept {len(folds)} fold models; "
                f"--ensemble {k} needs {k}"
            )
        return EnsembleMembers(
            tuple(folds[:k]),
            f"{tune_dir}: the fold models of the chosen trial {best.trial} ({k} of {len(folds)})",
        )
    runs = [tune_dir / record.run_dir for record in finished]
    runs = [run for run in runs if _finished(run)]
    if len(runs) < k:
        raise ExportError(
            f"{tune_dir}: {len(runs)} finished trial run(s) kept; --ensemble {k} needs {k}"
        )
    return EnsembleMembers(tuple(runs[:k]), f"{tune_dir}: the best {k} finished trials")
