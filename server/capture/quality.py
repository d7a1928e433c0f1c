"""Realized quality: the capture store's scored calls joined with the true answers posted as
feedback, per model version, over a recent window and over what the store still holds.

The join reads the store's files, not a process's memory, so it holds whichever process scored
a call and whichever took its label: every process of `--processes N` writes its own files
into the one directory, and every process (and the supervisor, for /metrics) joins them all.
Replicas sharing one store (a shared volume) would join the same way. Finished files never
change, so each is parsed once and kept until the size bound deletes it; a refresh parses only
the new ones. A call becomes joinable once its segment is renamed into the store (at most
--capture-rotate-s after it was scored).

Labels are counted, not refused: `unknown` has no captured call with its (id, row) (never
seen, not sampled, or trimmed away), `late` arrived more than the feedback
window after its call. The latest label of an (id, row) wins.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnserve import capture_store as store

log = logging.getLogger(__name__)

WINDOWS = ("recent", "life")
LOG_LOSS_FLOOR = 1e-15  # a probability of 0 for the true class costs -log(1e-15) ≈ 34.5
# The key of a row with an empty id (a store written before the server made ids for id-less
# calls, server/plane/request_ids.py): it joins no answer and pairs with nothing.
NO_ID = 0


@dataclass
class _Calls:
    """One finished calls file, parsed: per row its key (the hash of (id, row): 8 bytes a row,
    whatever the id's length), time and prediction; (16 + 4·C) bytes a row in all (C: the
    classes or targets)."""

    version: str
    keys: np.ndarray  # (N,) int64 hash((id, row)); NO_ID for a call without an id
    times: np.ndarray  # (N,) float64 seconds since the epoch
    ms: np.ndarray  # (N,) float32 the data plane's milliseconds (the shadow's own run)
    classes: list[str]  # classification: class names (columns bnserve.p.*); else []
    predicted: np.ndarray  # (N, C) probabilities, or (N, T) values
    targets: list[str]  # regression: target names; else []
    shadow: bool  # a shadow-calls-* file: the version's answers as a shadow


@dataclass
class _LabelFile:
    columns: list[str]
    rows: list[tuple[int, float, list[str]]]  # hash((id, row)), received, cells


@dataclass
class Window:
    """Realized quality over one window's labelled calls."""

    labelled: int = 0
    accuracy: float = math.nan
    log_loss: float = math.nan
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)  # (true, predicted)
    rmse: float = math.nan
    mae: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"labelled": self.labelled}
        if self.confusion or not math.isnan(self.accuracy):
            figures |= {
                "accuracy": _json_number(self.accuracy),
                "log_loss": _json_number(self.log_loss),
                "confusion": [
                    {"true": t, "predicted": p, "count": n}
                    for (t, p), n in sorted(self.confusion.items())
                ],
            }
        else:
            figures |= {"rmse": _json_number(self.rmse), "mae": _json_number(self.mae)}
        return figures


@dataclass
class VersionQuality:
    """One model version's realized quality; task: "classification" or "regression"."""

    task: str
    recent: Window
    life: Window

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "recent": self.recent.as_dict(), "life": self.life.as_dict()}


@dataclass
class ModelQuality:
    """A model's versions' quality and its labels that joined nothing."""

    versions: dict[str, VersionQuality]
    labels: int  # true answers in the store (latest per id and row)
    unknown: int
    late: int
    shadows: list[ShadowPair] = field(default_factory=list)


@dataclass
class ShadowPair:
    """A served version and its shadow on the same sampled calls (those the store holds).

    agreement: share of calls whose predicted class is the same (classification; NaN for
    regression); delta: per call the largest |Δp| over classes (|Δy| over targets), its mean
    and max; the shadow's and the served version's milliseconds; with true answers, both
    versions' realized quality on the same labelled calls."""

    primary: str
    shadow: str
    calls: int
    agreement: float
    delta_mean: float
    delta_max: float
    shadow_ms_mean: float
    shadow_ms_max: float
    primary_ms_mean: float
    primary_quality: Window
    shadow_quality: Window

    def as_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "shadow": self.shadow,
            "calls": self.calls,
            "agreement": _json_number(self.agreement),
            "delta_mean": _json_number(self.delta_mean),
            "delta_max": _json_number(self.delta_max),
            "shadow_ms_mean": _json_number(self.shadow_ms_mean),
            "shadow_ms_max": _json_number(self.shadow_ms_max),
            "primary_ms_mean": _json_number(self.primary_ms_mean),
            "primary_quality": self.primary_quality.as_dict(),
            "shadow_quality": self.shadow_quality.as_dict(),
        }


class QualityJoiner:
    """Joins the store under `root` on demand (`model`, `models`), at most every max_age_s.

    recent_s: the recent window (calls scored that long ago at most); window_s: a label is
    late, and not used, when it arrives more than this after its call."""

    def __init__(
        self, root: Path, recent_s: float, window_s: float, max_age_s: float = 1.0
    ) -> None:
        self.root = root
        self.recent_s = recent_s
        self.window_s = window_s
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._calls: dict[Path, _Calls] = {}
        self._labels: dict[Path, _LabelFile] = {}
        self._joined: dict[str, ModelQuality] = {}
        self._joined_at = -math.inf

    def models(self) -> dict[str, ModelQuality]:
        """Every model in the store, joined (at most max_age_s old)."""
        with self._lock:
            if time.monotonic() - self._joined_at >= self._max_age_s:
                self._refresh()
                self._joined = self._join(time.time())
                self._joined_at = time.monotonic()
            return self._joined

    def model(self, name: str) -> ModelQuality | None:
        return self.models().get(name)

    def _refresh(self) -> None:
        if not self.root.is_dir():
            self._calls, self._labels = {}, {}
            return
        calls = store.finished_files(self.root, store.CALLS)
        calls += store.finished_files(self.root, store.SHADOW_CALLS)
        labels = store.finished_files(self.root, store.LABELS)
        parsed_calls = {p: self._calls.get(p) or _parse_calls(p) for p in calls}
        parsed_labels = {p: self._labels.get(p) or _parse_labels(p) for p in labels}
        self._calls = {p: c for p, c in parsed_calls.items() if c is not None}
        self._labels = {p: f for p, f in parsed_labels.items() if f is not None}

    def _join(self, now: float) -> dict[str, ModelQuality]:
        labels_by_model: dict[str, dict[int, tuple[float, list[str], list[str]]]] = {}
        for path, labels in self._labels.items():
            latest = labels_by_model.setdefault(_model_of_labels(self.root, path), {})
            for key, received, cells in labels.rows:
                if key not in latest or latest[key][0] <= received:
                    latest[key] = (received, labels.columns, cells)
        calls_by_model: dict[str, list[_Calls]] = {}
        for path, calls in self._calls.items():
            calls_by_model.setdefault(_model_of_calls(self.root, path), []).append(calls)
        joined = {}
        for model in sorted(set(labels_by_model) | set(calls_by_model)):
            files = calls_by_model.get(model, [])
            answers = labels_by_model.get(model, {})
            primary = [calls for calls in files if not calls.shadow]
            joined[model] = self._join_model(primary, answers, now)
            shadow = [calls for calls in files if calls.shadow]
            if shadow:
                joined[model].shadows = self._pairs(primary, shadow, answers)
        return joined

    def _pairs(
        self,
        primary: list[_Calls],
        shadow: list[_Calls],
        labels: dict[int, tuple[float, list[str], list[str]]],
    ) -> list[ShadowPair]:
        """Each (served, shadow) pair of versions over the calls both answered."""
        shadow_keys = np.concatenate([calls.keys for calls in shadow])
        # Rows with an empty id (older stores) cannot be told apart: none of them is paired
        # (one would otherwise stand for every other, of any version).
        shadow_keys = shadow_keys[shadow_keys != NO_ID]
        served: dict[int, tuple[_Calls, int]] = {}
        for calls in primary:
            for index in np.flatnonzero(np.isin(calls.keys, shadow_keys)).tolist():
                served[int(calls.keys[index])] = (calls, index)
        tallies: dict[tuple[str, str], _PairTally] = {}
        for calls in shadow:
            for index, key in enumerate(calls.keys.tolist()):
                found = served.get(key)
                if found is None:
                    continue
                first, at = found
                task = "classification" if first.classes else "regression"
                pair = tallies.setdefault((first.version, calls.version), _PairTally(task))
                label = labels.get(key)
                usable = label is not None and label[0] - float(first.times[at]) <= self.window_s
                pair.add(first, at, calls, index, label if usable else None)
        return [tally.result(*versions) for versions, tally in sorted(tallies.items())]

    def _join_model(
        self,
        files: list[_Calls],
        labels: dict[int, tuple[float, list[str], list[str]]],
        now: float,
    ) -> ModelQuality:
        tallies: dict[str, dict[str, _Tally]] = {}
        seen: set[int] = set()
        late = 0
        # Labels never have an empty id (feedback refuses one), so calls without one never join.
        label_keys = np.fromiter(labels, dtype=np.int64, count=len(labels))
        for calls in files:
            task = "classification" if calls.classes else "regression"
            version = tallies.setdefault(calls.version, {w: _Tally(task) for w in WINDOWS})
            for index in np.flatnonzero(np.isin(calls.keys, label_keys)).tolist():
                key = int(calls.keys[index])
                received, columns, cells = labels[key]
                seen.add(key)
                called = float(calls.times[index])
                if received - called > self.window_s:
                    late += 1
                    continue
                windows = ["life"] + (["recent"] if now - called <= self.recent_s else [])
                for window in windows:
                    version[window].add(calls, index, columns, cells)
        versions = {
            name: VersionQuality(
                windows["life"].task, windows["recent"].result(), windows["life"].result()
            )
            for name, windows in tallies.items()
        }
        unknown = sum(1 for key in labels if key not in seen)
        return ModelQuality(versions, len(labels), unknown, late)


class _Tally:
    """Running sums of one window."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.count = 0
        self.correct = 0
        self.log_loss = 0.0
        self.confusion: dict[tuple[str, str], int] = {}
        self.squared = 0.0
        self.absolute = 0.0
        self.values = 0

    def add(self, calls: _Calls, index: int, columns: list[str], cells: list[str]) -> None:
        if calls.classes:
            if store.TRUE_LABEL not in columns:
                return
            true = cells[columns.index(store.TRUE_LABEL)]
            if true not in calls.classes:
                return  # a class this version does not know: not its to answer
            probabilities = calls.predicted[index]
            predicted = calls.classes[int(np.argmax(probabilities))]
            self.count += 1
            self.correct += predicted == true
            p_true = float(probabilities[calls.classes.index(true)])
            self.log_loss -= math.log(max(p_true, LOG_LOSS_FLOOR))
            self.confusion[(true, predicted)] = self.confusion.get((true, predicted), 0) + 1
            return
        try:
            truth = [float(cells[columns.index(t)]) for t in calls.targets]
        except ValueError:
            return  # a target this file's labels do not carry, or not a number
        errors = np.asarray(truth) - calls.predicted[index]
        self.count += 1
        self.squared += float(np.sum(errors**2))
        self.absolute += float(np.sum(np.abs(errors)))
        self.values += len(truth)

    def result(self) -> Window:
        if not self.count:
            return Window()
        if self.task == "classification":
            return Window(
                self.count, self.correct / self.count, self.log_loss / self.count, self.confusion
            )
        return Window(
            self.count,
            rmse=math.sqrt(self.squared / self.values),
            mae=self.absolute / self.values,
        )


class _PairTally:
    """Running sums of one (served, shadow) pair."""

    def __init__(self, task: str) -> None:
        self.calls = 0
        self.agreed = 0
        self.delta_sum = 0.0
        self.delta_max = 0.0
        self.shadow_ms: list[float] = []
        self.primary_ms = 0.0
        self.primary = _Tally(task)
        self.shadow = _Tally(task)
        self.task = task

    def add(
        self,
        first: _Calls,
        at: int,
        second: _Calls,
        index: int,
        label: tuple[float, list[str], list[str]] | None,
    ) -> None:
        p, q = first.predicted[at], second.predicted[index]
        if p.shape != q.shape:
            return  # versions with different classes or targets: no pair
        self.calls += 1
        if self.task == "classification":
            self.agreed += int(np.argmax(p) == np.argmax(q))
        delta = float(np.max(np.abs(p.astype(np.float64) - q)))
        self.delta_sum += delta
        self.delta_max = max(self.delta_max, delta)
        self.shadow_ms.append(float(second.ms[index]))
        self.primary_ms += float(first.ms[at])
        if label is not None:
            _, columns, cells = label
            self.primary.add(first, at, columns, cells)
            self.shadow.add(second, index, columns, cells)

    def result(self, primary: str, shadow: str) -> ShadowPair:
        n = self.calls
        return ShadowPair(
            primary=primary,
            shadow=shadow,
            calls=n,
            agreement=self.agreed / n if n and self.task == "classification" else math.nan,
            delta_mean=self.delta_sum / n if n else math.nan,
            delta_max=self.delta_max if n else math.nan,
            shadow_ms_mean=sum(self.shadow_ms) / n if n else math.nan,
            shadow_ms_max=max(self.shadow_ms) if n else math.nan,
            primary_ms_mean=self.primary_ms / n if n else math.nan,
            primary_quality=self.primary.result(),
            shadow_quality=self.shadow.result(),
        )


def _model_of_calls(root: Path, path: Path) -> str:
    return path.relative_to(root).parts[0]  # MODEL/VERSION/calls-…


def _model_of_labels(root: Path, path: Path) -> str:
    return path.relative_to(root).parts[0]  # MODEL/labels/labels-…


def _parse_calls(path: Path) -> _Calls | None:
    """A calls file's keys, times and predictions; None (logged) when it cannot be read."""
    try:
        header, rows = store.read_file(path)
        at_id, at_row, at_time, at_ms = (
            header.index(c) for c in (store.ID, store.ROW, store.TIME, store.MS)
        )
        version = path.parent.name
        probability_columns = [i for i, h in enumerate(header) if h.startswith(store.PROBABILITY)]
        value_columns = [i for i, h in enumerate(header) if h.startswith(store.VALUE)]
        wanted = probability_columns or value_columns
        predicted = np.array(
            [[float(row[i]) if row[i] else math.nan for i in wanted] for row in rows],
            dtype=np.float32,
        ).reshape(len(rows), len(wanted))
        return _Calls(
            version=version,
            keys=np.fromiter(
                (hash((row[at_id], row[at_row])) if row[at_id] else NO_ID for row in rows),
                dtype=np.int64,
                count=len(rows),
            ),
            times=np.array([float(row[at_time]) for row in rows], dtype=np.float64),
            ms=np.array([float(row[at_ms]) for row in rows], dtype=np.float32),
            classes=[header[i][len(store.PROBABILITY) :] for i in probability_columns],
            predicted=predicted,
            targets=[header[i][len(store.VALUE) :] for i in value_columns],
            shadow=path.name.startswith(store.SHADOW_CALLS),
        )
    except (OSError, EOFError, gzip.BadGzipFile, ValueError, IndexError) as error:
        with contextlib.suppress(Exception):
            log.warning("capture: %s not joined: %s", path, error)
        return None


def _parse_labels(path: Path) -> _LabelFile | None:
    try:
        header, rows = store.read_file(path)
        at_id, at_row, at_received = (
            header.index(c) for c in (store.ID, store.ROW, store.RECEIVED)
        )
        value_columns = [i for i, h in enumerate(header) if not h.startswith(store.PREFIX)]
        return _LabelFile(
            columns=[header[i] for i in value_columns],
            rows=[
                (
                    hash((row[at_id], row[at_row])),
                    float(row[at_received]),
                    [row[i] for i in value_columns],
                )
                for row in rows
            ],
        )
    except (OSError, EOFError, gzip.BadGzipFile, ValueError, IndexError) as error:
        log.warning("capture: %s not joined: %s", path, error)
        return None


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value
