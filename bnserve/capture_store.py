"""The capture store's layout, shared by what writes it (`bnserve serve --capture-dir`,
server/capture/) and what reads it back (the server's quality join, `bnserve train --data DIR`).

docs/contracts.md ("The capture store") is the contract; this module is its one statement in
code. Files are gzip CSV (stdlib only: the serving image carries no pyarrow), written whole
under a hidden temporary name and renamed, so a reader that lists only `calls-*.csv.gz` and
`labels-*.csv.gz` never sees a half-written file:

    DIR/MODEL/VERSION/calls-<utc>-p<pid>-<seq>.csv.gz   scored calls, one row per example
    DIR/MODEL/VERSION/shadow-calls-….csv.gz             the version's answers as a shadow
    DIR/MODEL/labels/labels-<utc>-p<pid>-<seq>.csv.gz   true answers posted as feedback

Imports nothing heavy (csv and gzip); training reads the joined table with its own readers.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator
from pathlib import Path

# Bookkeeping columns (the prefix keeps them apart from a model's own feature names).
PREFIX = "bnserve."
ID = PREFIX + "id"  # the call's request id: the caller's, else one the server made
ROW = PREFIX + "row"  # the example's index in its call (0 for a single example)
TIME = PREFIX + "time"  # seconds since the epoch (UTC) the call was scored
MS = PREFIX + "ms"  # milliseconds the data plane took (validation, queue, run), per call
VERSION = PREFIX + "version"  # the model version that answered
PREDICTED = PREFIX + "label"  # classification: the predicted class name
PROBABILITY = PREFIX + "p."  # + class name: that class's probability
VALUE = PREFIX + "y."  # + target name: the predicted value (regression)
RECEIVED = PREFIX + "received"  # labels: seconds since the epoch the true answer arrived
# The true answer's column: `label` (a class name) for classification, each target's own name
# for regression; `bnserve train --data DIR --target label` trains on it.
TRUE_LABEL = "label"

CALLS = "calls-"
SHADOW_CALLS = "shadow-calls-"  # a shadow version's answers to sampled calls (same columns)
LABELS = "labels-"
LABELS_DIR = "labels"
SUFFIX = ".csv.gz"


def finished_files(directory: Path, prefix: str) -> list[Path]:
    """Every finished store file under directory (recursive) whose name starts with prefix
    (CALLS or LABELS), in name order (their names start with their UTC time); temporary files
    (a leading dot, a .tmp suffix) are never listed."""
    found = [
        path
        for path in directory.rglob(f"{prefix}*{SUFFIX}")
        if path.is_file() and not path.name.startswith(".")
    ]
    return sorted(found, key=lambda path: (path.name, str(path)))


def is_capture_directory(directory: Path) -> bool:
    """A directory holding finished capture files (anywhere below it)."""
    return bool(finished_files(directory, CALLS))


def read_file(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one finished file; OSError, EOFError or gzip.BadGzipFile (a torn
    file) and csv.Error propagate."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        return header, list(reader)


def format_number(value: float) -> str:
    """A float32 value exactly (9 significant digits); NaN (missing) as an empty cell."""
    return "" if value != value else f"{value:.9g}"


class TableError(ValueError):
    """A directory that is not one table (no files, or files whose columns differ)."""


def _labels_by_key(directory: Path) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """The true-answer columns and, per (id, row), the latest answer's cells."""
    columns: list[str] = []
    latest: dict[tuple[str, str], tuple[float, list[str]]] = {}
    for path in finished_files(directory, LABELS):
        header, rows = read_file(path)
        try:
            at_id, at_row, at_received = header.index(ID), header.index(ROW), header.index(RECEIVED)
        except ValueError:
            raise TableError(f"{path}: not a labels file (no {ID}/{ROW}/{RECEIVED})") from None
        value_columns = [i for i, name in enumerate(header) if not name.startswith(PREFIX)]
        names = [header[i] for i in value_columns]
        if columns and names != columns:
            raise TableError(f"{path}: label columns {names} differ from {columns}")
        columns = names
        for row in rows:
            received = float(row[at_received])
            key = (row[at_id], row[at_row])
            if key not in latest or latest[key][0] <= received:
                latest[key] = (received, [row[i] for i in value_columns])
    return columns, {key: cells for key, (_, cells) in latest.items()}


def training_rows(directory: Path) -> Iterator[list[str]]:
    """The directory as one table: a header, then rows.

    A capture directory: every captured example's input columns (bookkeeping dropped), then
    its true answer's columns (empty when none arrived yet; a trainer drops or refuses those
    rows); files in name order. Any other directory: its CSV files (.csv, .csv.gz) concatenated
    in name order, one header kept. TableError when the files' columns differ."""
    if is_capture_directory(directory):
        yield from _capture_rows(directory)
        return
    files = sorted(
        path
        for path in directory.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.name.lower().endswith((".csv", ".csv.gz"))
    )
    if not files:
        raise TableError(f"{directory}: no .csv or .csv.gz files (and no capture files)")
    first_header: list[str] | None = None
    for path in files:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if first_header is None:
                first_header = header
                yield header
            elif header != first_header:
                raise TableError(
                    f"{path}: its columns {header[:5]}… differ from {files[0].name}'s "
                    f"{first_header[:5]}… (a directory is read as one table)"
                )
            yield from reader


def _capture_rows(directory: Path) -> Iterator[list[str]]:
    label_columns, labels = _labels_by_key(directory)
    first_header: list[str] | None = None
    blank = [""] * len(label_columns)
    for path in finished_files(directory, CALLS):
        header, rows = read_file(path)
        keep = [i for i, name in enumerate(header) if not name.startswith(PREFIX)]
        names = [header[i] for i in keep]
        if first_header is None:
            first_header = names
            yield names + label_columns
        elif names != first_header:
            raise TableError(
                f"{path}: input columns differ from the first capture file's (capture one "
                "model's directory: DIR/MODEL)"
            )
        at_id, at_row = header.index(ID), header.index(ROW)
        for row in rows:
            answer = labels.get((row[at_id], row[at_row]), blank)
            yield [row[i] for i in keep] + answer


def write_training_csv(directory: Path, out: Path) -> None:
    """training_rows(directory) as one CSV file at out (created 0600)."""
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(training_rows(directory))
