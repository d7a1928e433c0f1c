"""The tune's results: a best-first table (terminal and results.csv) and the `best` run link."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnserve import atomic
from bnserve.training import rundir
from bnserve.training.tune.cv import format_mean_std
from bnserve.training.tune.store import TrialRecord
from bnserve.training.tune.trials import fold_dir

CSV_NAME = "results.csv"
BEST_LINK = "best"  # symlink to the best trial's run directory, ready for `bnserve export`


def result_rows(ranked: list[TrialRecord], names: list[str]) -> list[dict[str, Any]]:
    """One row per trial, best first: rank, trial, round, state, dev_error, each hyperparameter."""
    rows = []
    for rank, record in enumerate(ranked, start=1):
        row: dict[str, Any] = {
            "rank": rank,
            "trial": record.trial,
            "round": record.round,
            "state": record.state,
            "dev_error": record.dev_error,
            "epochs": len(record.history),
        }
        scores = record.scores or {}
        if "dev_std" in scores:  # cross-validated: dev_error is the mean over folds
            row["dev_std"] = scores["dev_std"]
        row["dev_loss"] = scores.get("loss")
        row["kept_epoch"] = scores.get("epochs")  # with cv: the median over folds (retrained for)
        row.update({name: record.params.get(name) for name in names})
        row["seconds"] = None if record.seconds is None else round(record.seconds, 3)
        row["run_dir"] = record.run_dir
        row["error"] = record.error or ""
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write the rows (all share the first row's columns)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic.write_bytes(path, buffer.getvalue().encode("utf-8"))


def format_table(rows: list[dict[str, Any]], limit: int) -> str:
    """The first `limit` rows as an aligned text table (without run_dir and error columns).

    With cross-validation the dev_error column shows "mean ± std" over folds."""
    hidden = ("run_dir", "error", "dev_std")
    columns = [name for name in (rows[0] if rows else {}) if name not in hidden]
    cells = [[_cell(row[name]) for name in columns] for row in rows[:limit]]
    if rows and "dev_std" in rows[0]:
        at = columns.index("dev_error")
        columns[at] = "dev_error ± std"
        for line, row in zip(cells, rows[:limit], strict=False):
            line[at] = format_mean_std(row["dev_error"], row["dev_std"])
    widths = [max([len(name)] + [len(line[i]) for line in cells]) for i, name in enumerate(columns)]
    lines = ["  ".join(name.rjust(width) for name, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    if len(rows) > limit:
        lines.append(f"… {len(rows) - limit} more in {CSV_NAME}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fold_members(best: TrialRecord) -> list[str]:
    """The best trial's fold run directories of the first drawing of its folds, relative to the
    tune directory: K models that each left out another K-th of the train + dev rows, to be
    exported as one ensemble (their mean) beside the retrained `final`."""
    folds = int((best.scores or {}).get("folds") or 0)
    return [f"{best.run_dir}/{fold_dir(fold, 0)}" for fold in range(folds)]


def link_best(out: Path, best: TrialRecord, final_runs: Sequence[Path] = ()) -> Path | None:
    """Point `out/best` at the best trial's run directory (atomically) and write best.json.

    With cross-validation `final_runs` are the best trials retrained on all train + dev rows,
    best first: `best` points at the first, and best.json's `final_members` lists them all (the
    tune's model is the mean of their predictions). Returns None when the trial left no
    finished run directory (synthetic)."""
    final_run = final_runs[0] if final_runs else None
    run_dir = best.run_dir if final_run is None else final_run.name
    meta_path = out / run_dir / "meta.json"
    if (
        not meta_path.exists()
        or json.loads(meta_path.read_text("utf-8")).get("status") != "finished"
    ):
        return None
    link = out / BEST_LINK
    with atomic.built_in_place(link, out / f".{BEST_LINK}.tmp") as temporary:
        temporary.symlink_to(run_dir, target_is_directory=True)
    summary = {
        "trial": best.trial,
        "dev_error": best.dev_error,
        "params": best.params,
        "run_dir": run_dir,
        "config": json.loads((out / run_dir / "config.json").read_text(encoding="utf-8")),
    }
    if final_run is not None:  # the scores of the cross-validated trial it was retrained from
        summary["cv"] = best.scores
        summary["members"] = fold_members(best)
        summary["final_members"] = [run.name for run in final_runs]
    rundir.write_json(out / "best.json", summary)
    return link
