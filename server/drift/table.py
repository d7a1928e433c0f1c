"""`bnserve drift` on a model with text columns or gaps (bnserve.format "2"): the raw table read
by column name (a .csv with a header, or .parquet) and the graph's feed built from it.

Numeric cells are numbers, or missing when empty or one of the model's missing tokens
(bnserve.schema "na_values"): NaN. Categorical cells stay text (columns.level_codes reads them as
the graph does). Columns the model does not use are ignored.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnserve.header_hints import delimiter_hint
from bnserve.server.drift.columns import ColumnsReference

MixedColumns = dict[str, np.ndarray]  # column name -> (N,) float64 (NaN: missing) or object str


@dataclass(frozen=True)
class GraphInput:
    """One graph input of a format-2 model (bnserve.schema "inputs"): a column of its own, or,
    for a numbers-only model, `x` [N, F] made of `columns`."""

    name: str
    kind: str  # "numeric" | "categorical"
    columns: tuple[str, ...]


def graph_inputs(schema_text: str) -> tuple[GraphInput, ...]:
    """The graph inputs bnserve.schema lists, in order; raises ValueError when malformed."""
    schema = json.loads(schema_text)
    inputs = []
    for entry in schema["inputs"]:
        name = str(entry["name"])
        columns = tuple(str(column) for column in entry.get("columns", (name,)))
        inputs.append(GraphInput(name, str(entry["kind"]), columns))
    return tuple(inputs)


def feed(
    inputs: Sequence[GraphInput], columns: Mapping[str, np.ndarray], rows: slice
) -> dict[str, np.ndarray]:
    """onnxruntime's feed for `rows` of the table: [n, 1] float32 or str per column input, or
    x [n, F] float32 for a numbers-only model."""
    fed: dict[str, np.ndarray] = {}
    for graph_input in inputs:
        parts = [columns[column][rows] for column in graph_input.columns]
        if graph_input.kind == "categorical":
            cells = ["" if cell is None else str(cell) for cell in parts[0]]
            fed[graph_input.name] = np.array(cells, dtype=object)[:, None]
        else:
            fed[graph_input.name] = np.stack(parts, axis=1).astype(np.float32)
    return fed


class TableError(ValueError):
    """The table cannot be read; the message names the file, line and column."""


def read_columns(path: Path, reference: ColumnsReference, delimiter: str) -> MixedColumns:
    """Every column the model uses, by name, from a .csv or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, column = _csv_columns(path, delimiter, reference.na_values)
    elif suffix == ".parquet":
        header, column = _parquet_columns(path)
    else:
        raise TableError(
            f"{path}: a model with text columns or gaps reads .csv or .parquet, not {suffix!r}"
        )
    wanted = [c.name for c in reference.columns]
    missing = [name for name in wanted if name not in header]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        raise TableError(
            f"{path}: missing {len(missing)} of the model's {len(wanted)} columns "
            f"({shown}{', …' if len(missing) > 5 else ''})"
        )
    table = {c.name: column(header.index(c.name), c.kind) for c in reference.columns}
    if not table or next(iter(table.values())).size == 0:
        raise TableError(f"{path}: no data rows")
    return table


ColumnReader = Callable[[int, str], np.ndarray]  # (header index, kind) -> (N,) cells


def _csv_columns(
    path: Path, delimiter: str, na_values: tuple[str, ...]
) -> tuple[list[str], ColumnReader]:
    try:
        text = path.read_text(encoding="utf-8-sig")
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except (UnicodeDecodeError, csv.Error) as error:
        raise TableError(f"{path}: not a readable UTF-8 CSV ({error})") from None
    if not rows:
        raise TableError(f"{path}: empty file (a header line is needed)")
    header = [name.strip() for name in rows[0]]
    if hint := delimiter_hint(header, delimiter):
        raise TableError(f"{path}: line 1: {hint}")
    body = [(line, row) for line, row in enumerate(rows[1:], start=2) if row]
    for line, row in body:
        if len(row) != len(header):
            raise TableError(
                f"{path}: line {line} has {len(row)} cells, the header has {len(header)}"
            )
    missing = frozenset(na_values)

    def column(index: int, kind: str) -> np.ndarray:
        if kind == "categorical":
            return np.array([row[index] for _, row in body], dtype=object)
        values = np.empty(len(body))
        for position, (line, row) in enumerate(body):
            cell = row[index].strip()
            if cell in missing:
                values[position] = np.nan
                continue
            try:
                values[position] = float(cell)
            except ValueError:
                raise TableError(
                    f"{path}: line {line}, column {header[index]!r}: {row[index]!r} is not a "
                    "number (a missing cell is empty or one of the model's missing tokens)"
                ) from None
        return values

    return header, column


def _parquet_columns(path: Path) -> tuple[list[str], ColumnReader]:
    try:
        import pyarrow.parquet as parquet
    except ModuleNotFoundError:
        raise TableError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = parquet.read_table(path)
    except Exception as error:
        raise TableError(f"{path}: not a readable Parquet file ({error})") from None

    def column(index: int, kind: str) -> np.ndarray:
        cells: list[Any] = table.column(index).to_pylist()
        if kind == "categorical":
            return np.array([None if c is None else str(c) for c in cells], dtype=object)
        try:
            return np.array([np.nan if c is None else float(c) for c in cells])
        except (TypeError, ValueError):
            name = table.column_names[index]
            raise TableError(f"{path}: column {name!r} is not numeric") from None

    return list(table.column_names), column
