"""Raw records of a run's table, as a format-2 graph takes them, and their design inputs.

A RawRows holds R records column by column: a numeric column as float64 (NaN missing, values
float32-exact as the model sees them), a categorical column as Python strings ("" missing).
`design_of` encodes them with training's own encoder (training/data/encoding.py) into the (R, D)
design matrix the numpy inference path takes; `feeds_of` gives onnxruntime's inputs. Together
they are the fold check of a raw-column graph: the same records both ways.

Where they come from: the run's data file (the held-out rows, rebuilt from the stored codes and
vocabularies), or, when it is gone, records synthesized from the schema alone (levels, fills);
plus the rows every check and parity gate needs: every cell missing, every level unseen, every
kept level of every column, and numeric values at the edges of their range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.export.columns import is_mixed, missing_tokens, used_columns
from bnserve.server.modelfile.contract import INPUT_NAME
from bnserve.training.data.encoding import Encoder
from bnserve.training.data.schema import ColumnSchema, TableSchema, number_of_cell, number_text

UNSEEN_LEVEL = "<unseen-level>"  # a level no training row had (scored as <other>)
EDGE_CORNERS = 16  # rows with each numeric column at its low or high end, seeded


@dataclass(frozen=True)
class RawRows:
    """R raw records: used column name → (R,) float64 (NaN missing) or object strings."""

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def take(self, rows: np.ndarray) -> RawRows:
        return RawRows({name: values[rows] for name, values in self.columns.items()})

    @staticmethod
    def concat(parts: Sequence[RawRows]) -> RawRows:
        names = list(parts[0].columns)
        return RawRows(
            {name: np.concatenate([part.columns[name] for part in parts]) for name in names}
        )


def _numbers(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _strings(values: Sequence[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def raw_from_stored(
    schema: TableSchema, vocabularies: Sequence[tuple[str, ...] | None], stored: np.ndarray
) -> RawRows:
    """Stored rows (R, F) as the readers keep them (numbers, or codes into the column's
    vocabulary; NaN missing) → the raw records a client would send."""
    by_column = list(vocabularies) or [None] * len(schema.columns)
    columns: dict[str, np.ndarray] = {}
    for position, column in enumerate(schema.columns):
        if column.kind == "ignored":
            continue
        values = np.asarray(stored[:, position], dtype=np.float64)
        vocabulary = by_column[position]
        present = ~np.isnan(values)
        if column.kind == "numeric":
            if vocabulary is not None:  # a text column read as numbers (--numeric)
                parsed = [number_of_cell(cell) for cell in vocabulary]
                lookup = np.array([np.nan if n is None else n for n in parsed])
                numbers = np.full(len(values), np.nan)
                numbers[present] = lookup[values[present].astype(np.int64)]
                values = numbers
            columns[column.name] = _numbers(values)
            continue
        cells = [""] * len(values)
        for row in np.flatnonzero(present).tolist():
            value = values[row]
            cells[row] = vocabulary[int(value)] if vocabulary is not None else number_text(value)
        columns[column.name] = _strings(cells)
    return RawRows(columns)


def design_of(schema: TableSchema, raw: RawRows) -> np.ndarray:
    """The design inputs (R, D) float64 of raw records, by training's encoder: a cell that is a
    missing token is missing; any other text is looked up exactly as the graph does."""
    tokens = set(missing_tokens(schema))
    stored = np.full((len(raw), len(schema.columns)), np.nan)
    vocabularies: list[tuple[str, ...] | None] = []
    for position, column in enumerate(schema.columns):
        values = raw.columns.get(column.name)
        if values is None or column.kind == "ignored":
            vocabularies.append(None)
            continue
        if column.kind == "numeric":
            stored[:, position] = _numbers(values)
            vocabularies.append(None)
            continue
        index: dict[str, int] = {}
        for row, cell in enumerate(values.tolist()):
            if cell not in tokens:
                stored[row, position] = index.setdefault(cell, len(index))
        vocabularies.append(tuple(index))
    return Encoder(schema, vocabularies).encode(stored)


def feeds_of(schema: TableSchema, raw: RawRows) -> dict[str, np.ndarray]:
    """onnxruntime's inputs for raw records: each column [R, 1] (float32 or strings) for a
    mixed model; x [R, F] float32 for a numbers-only one."""
    names = [column.name for column in used_columns(schema)]
    if not is_mixed(schema):
        matrix = np.stack([raw.columns[name] for name in names], axis=1)
        return {INPUT_NAME: matrix.astype(np.float32).reshape(len(raw), len(names))}
    feeds = {}
    for column in used_columns(schema):
        values = raw.columns[column.name]
        if column.kind == "numeric":
            feeds[column.name] = values.astype(np.float32).reshape(-1, 1)
        else:
            feeds[column.name] = values.astype(object).reshape(-1, 1)
    return feeds


def reference_json(schema: TableSchema, raw: RawRows) -> dict[str, list[list[Any]]]:
    """`bnserve.reference_inputs` of a format-2 model: per graph input its rows, numbers (the
    float32 values, shortest repr) or null, and strings."""
    out: dict[str, list[list[Any]]] = {}
    for name, values in feeds_of(schema, raw).items():
        if values.dtype == object:
            out[name] = [[str(cell)] for cell in values[:, 0].tolist()]
        else:
            # each float32 as its shortest decimal (38.9, not 38.900001525878906): it reads
            # back as the very same float32
            out[name] = [[None if np.isnan(v) else float(str(v)) for v in row] for row in values]
    return out


def _default_value(column: ColumnSchema) -> float:
    return 0.0 if column.fill is None else float(np.float32(column.fill))


def _categoricals(schema: TableSchema) -> list[ColumnSchema]:
    return [column for column in used_columns(schema) if column.kind == "categorical"]


def special_rows(schema: TableSchema) -> RawRows:
    """Every cell missing ("" and, once more, the first missing token that is not ""); every
    categorical cell an unseen level (numbers at their fill); then rows covering every kept and
    rare level of every categorical column, the others cycling (numbers at their fill)."""
    tokens = [token for token in missing_tokens(schema) if token]
    columns: dict[str, list[Any]] = {}
    levels = {
        column.name: [value for value, _ in column.levels] + [value for value, _ in column.rare[:1]]
        for column in _categoricals(schema)
    }
    cover = max((len(values) for values in levels.values()), default=0)
    for column in used_columns(schema):
        if column.kind == "numeric":
            columns[column.name] = [np.nan, np.nan] + [_default_value(column)] * (cover + 1)
        else:
            values = levels[column.name]
            columns[column.name] = ["", tokens[0], UNSEEN_LEVEL] + [
                values[row % len(values)] for row in range(cover)
            ]
    if not _categoricals(schema):  # numbers only: the unseen row is a row of fills
        columns = {name: values[:2] for name, values in columns.items()}
    return _as_raw(schema, columns)


def _as_raw(schema: TableSchema, columns: dict[str, list[Any]]) -> RawRows:
    kinds = {column.name: column.kind for column in used_columns(schema)}
    return RawRows(
        {
            name: _numbers(values) if kinds[name] == "numeric" else _strings(values)
            for name, values in columns.items()
        }
    )


def edge_rows(schema: TableSchema, raw: RawRows, seed: int = 0) -> RawRows:
    """Numbers at the edges of raw's range: every numeric column at its lowest present value,
    at its highest, then EDGE_CORNERS rows with each at one end or the other; categorical
    cells drawn from the kept levels, an unseen level and missing (seeded)."""
    rng = np.random.default_rng(seed)
    rows = 2 + EDGE_CORNERS
    columns: dict[str, list[Any]] = {}
    for column in used_columns(schema):
        values = raw.columns[column.name]
        if column.kind == "numeric":
            present = values[~np.isnan(values)] if len(values) else values
            if not present.size:
                present = np.array([_default_value(column)])
            low, high = float(present.min()), float(present.max())
            corners = np.where(rng.random(EDGE_CORNERS) < 0.5, high, low)
            columns[column.name] = [low, high, *corners.tolist()]
        else:
            choices = [value for value, _ in column.levels] + [UNSEEN_LEVEL, ""]
            columns[column.name] = [choices[int(i)] for i in rng.integers(0, len(choices), rows)]
    return _as_raw(schema, columns)


def synthetic_rows(schema: TableSchema, count: int, seed: int = 0) -> RawRows:
    """Records made from the schema alone, when the run's data file is gone: numbers around
    their fill (a tenth missing where the column had gaps), levels drawn by training count."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {}
    for column in used_columns(schema):
        if column.kind == "numeric":
            centre = _default_value(column)
            values = centre + rng.normal(0.0, max(1.0, abs(centre) * 0.1), count)
            if column.missing_count:
                values[rng.random(count) < 0.1] = np.nan
            columns[column.name] = values.tolist()
        else:
            levels = [value for value, _ in column.levels + column.rare[:1]]
            counts = np.array([n for _, n in column.levels + column.rare[:1]], dtype=np.float64)
            picked = rng.choice(len(levels), size=count, p=counts / counts.sum())
            cells = [levels[int(i)] for i in picked]
            if column.missing_count:
                cells = ["" if rng.random() < 0.1 else cell for cell in cells]
            columns[column.name] = cells
    return _as_raw(schema, columns)
