"""The tune's SQLite file: settings, rounds with their boxes, and every trial's state.

Only the coordinating process writes it (workers return results; parallel SQLite writers are a
known source of "database is locked"). WAL with synchronous=NORMAL survives a killed process
(kill -9) without an fsync per trial, which keeps the tuner's own overhead small.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnserve import atomic

STATES = ("pending", "running", "finished", "failed", "pruned")
FILENAME = "tune.sqlite"
NEW_FILENAME = ".tune.sqlite.new"  # TrialStore.create builds the file here, then renames it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    box TEXT NOT NULL              -- JSON of sampler.Box
);
CREATE TABLE IF NOT EXISTS trials (
    trial INTEGER PRIMARY KEY,     -- 0, 1, ... in the order trials were planned
    round INTEGER NOT NULL REFERENCES rounds(round),
    point INTEGER NOT NULL,        -- index of the sampled point (two trials share one with
                                   -- --compare-batchnorm); seeds derive from it
    state TEXT NOT NULL CHECK (state IN ('pending','running','finished','failed','pruned')),
    params TEXT NOT NULL,          -- JSON: the hyperparameters this trial sets
    seed INTEGER NOT NULL,         -- the training seed
    run_dir TEXT NOT NULL,         -- relative to the tune directory
    dev_error REAL,                -- finished: final dev error; pruned: best before stopping
    history TEXT,                  -- JSON list of per-epoch dev errors
    error TEXT,                    -- failed: what went wrong
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,               -- unix seconds of the latest start
    finished_at REAL,
    seconds REAL                   -- wall time of the latest attempt, as the worker measured it
);
CREATE TABLE IF NOT EXISTS scores (
    trial INTEGER PRIMARY KEY REFERENCES trials(trial),
    value TEXT NOT NULL            -- JSON of the trial's scores (trials.TrialOutcome.scores)
);
"""


def database_failure(path: Path, error: sqlite3.DatabaseError) -> str:
    """One line for a tune database that cannot be used: what happened and what to do."""
    text = str(error)
    if "full" in text or _nearly_full(path.parent):  # SQLITE_FULL, or an I/O error on a full disk
        then = f"bnserve tune --resume --out {path.parent}" if path.exists() else "start it again"
        what = text if "full" in text else f"{text} (the disk is full)"
        return f"{path}: {what}; the trials recorded stay; make room, then {then}"
    return (
        f"{path}: not a readable tune database ({text}); it may have been truncated or "
        f"overwritten. The trials' run directories in {path.parent / 'trials'} are intact; "
        f"restore {path.name} from a backup to --resume, or start the search again in a new --out"
    )


def _nearly_full(directory: Path) -> bool:
    """Under 1 MiB free: SQLite reports a full disk as "disk I/O error" when its WAL cannot grow."""
    while not directory.exists() and directory != directory.parent:  # a new tune's, removed
        directory = directory.parent
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 2**20


@dataclass(frozen=True)
class TrialRecord:
    """One row of the trials table."""

    trial: int
    round: int
    point: int
    state: str
    params: dict[str, Any]
    seed: int
    run_dir: str
    dev_error: float | None
    history: list[float]
    error: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    scores: dict[str, Any] | None = None  # mean dev loss, kept epochs, cross-validation figures


@dataclass(frozen=True)
class PlannedTrial:
    """A trial to insert as pending."""

    trial: int
    point: int
    params: dict[str, Any]
    seed: int
    run_dir: str


class TrialStore:
    """Reads and writes one tune's SQLite file; every write is its own committed transaction."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        """Create the file when it does not exist; an existing one is checked whole first
        (sqlite3.DatabaseError when it is corrupt or lacks a table: nothing is changed)."""
        self.path = Path(path)
        existing = self.path.exists()
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
        else:
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            if existing:
                self._check_whole()
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def create(cls, path: Path, settings: dict[str, Any]) -> TrialStore:
        """A new store holding `settings`, all or nothing: built under a temporary name and
        renamed into place, so a tune.sqlite never exists without its settings (a full disk or a
        kill while creating it leaves no file that --resume would refuse and a new tune trip on).
        """
        temp = Path(path).with_name(NEW_FILENAME)
        journals = [temp.with_name(temp.name + "-wal"), temp.with_name(temp.name + "-shm")]
        with atomic.built_in_place(Path(path), temp, companions=journals), cls(temp) as store:
            store.save_settings(settings)
            store._db.execute("PRAGMA journal_mode=DELETE")  # one file, whole, to rename
        return cls(path)

    def _check_whole(self) -> None:
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"integrity check: {problems[0]}")
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        missing = sorted({"settings", "rounds", "trials"} - tables)
        if missing:
            raise sqlite3.DatabaseError(f"no such table: {', '.join(missing)}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # settings ------------------------------------------------------------------------------

    def save_settings(self, values: dict[str, Any]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in values.items()],
            )

    def settings(self) -> dict[str, Any]:
        rows = self._db.execute("SELECT key, value FROM settings").fetchall()
        return {key: json.loads(value) for key, value in rows}

    # rounds and trials ---------------------------------------------------------------------

    def add_round(self, round_index: int, box: dict[str, Any], trials: list[PlannedTrial]) -> None:
        """Record a round's box and its trials as pending, all or nothing."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO rounds (round, box) VALUES (?, ?)", (round_index, json.dumps(box))
            )
            self._db.executemany(
                "INSERT INTO trials (trial, round, point, state, params, seed, run_dir) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                [
                    (t.trial, round_index, t.point, json.dumps(t.params), t.seed, t.run_dir)
                    for t in trials
                ],
            )

    def rounds(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self._db.execute("SELECT round, box FROM rounds ORDER BY round").fetchall()
        return [(index, json.loads(box)) for index, box in rows]

    def mark_running(self, trial: int) -> None:
        self._update(
            "UPDATE trials SET state = 'running', attempts = attempts + 1, started_at = ?, "
            "error = NULL WHERE trial = ?",
            (time.time(), trial),
        )

    def mark_pending(self, trial: int) -> None:
        """Back to pending: its worker was lost, so it runs again."""
        self._update("UPDATE trials SET state = 'pending' WHERE trial = ?", (trial,))

    def mark_done(
        self,
        trial: int,
        *,
        state: str,
        dev_error: float | None,
        history: list[float],
        seconds: float,
        error: str | None = None,
        scores: dict[str, Any] | None = None,
    ) -> None:
        """Record a trial's end: finished, pruned or failed (and its scores, in one commit)."""
        if state not in ("finished", "pruned", "failed"):
            raise ValueError(f"a trial ends finished, pruned or failed, not {state!r}")
        with self._transaction():
            self._db.execute(
                "UPDATE trials SET state = ?, dev_error = ?, history = ?, error = ?, "
                "finished_at = ?, seconds = ? WHERE trial = ?",
                (state, dev_error, json.dumps(history), error, time.time(), seconds, trial),
            )
            self._db.execute("DELETE FROM scores WHERE trial = ?", (trial,))
            if scores is not None:
                self._db.execute(
                    "INSERT INTO scores (trial, value) VALUES (?, ?)", (trial, json.dumps(scores))
                )

    def requeue_interrupted(self) -> list[int]:
        """Trials left running by a killed coordinator go back to pending; returns their ids."""
        with self._transaction():
            rows = self._db.execute("SELECT trial FROM trials WHERE state = 'running'").fetchall()
            self._db.execute("UPDATE trials SET state = 'pending' WHERE state = 'running'")
        return [trial for (trial,) in rows]

    def trials(self, *, round_index: int | None = None) -> list[TrialRecord]:
        query = "SELECT trials.*, scores.value AS scores FROM trials LEFT JOIN scores USING (trial)"
        args: tuple[Any, ...] = ()
        if round_index is not None:
            query, args = query + " WHERE round = ?", (round_index,)
        cursor = self._db.execute(query + " ORDER BY trial", args)
        names = [column[0] for column in cursor.description]
        return [_record(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]

    # helpers -------------------------------------------------------------------------------

    def _update(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._transaction():
            self._db.execute(sql, args)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _record(row: dict[str, Any]) -> TrialRecord:
    return TrialRecord(
        trial=row["trial"],
        round=row["round"],
        point=row["point"],
        state=row["state"],
        params=json.loads(row["params"]),
        seed=row["seed"],
        run_dir=row["run_dir"],
        dev_error=row["dev_error"],
        history=json.loads(row["history"]) if row["history"] else [],
        error=row["error"],
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        seconds=row["seconds"],
        scores=json.loads(row["scores"]) if row["scores"] else None,
    )
