"""The table's schema: each feature column's kind, fill value and levels, from the training rows.

A column is numeric when every present training cell is a number, categorical when one is text
(true/false, yes/no are two levels), unless --numeric / --categorical / --ignore say otherwise.
An unnamed first column holding 0, 1, 2, … or 1, 2, 3, … (an R/pandas row index) is left out.
Numeric: missing cells are filled with the training mean, plus a 0/1 missing indicator input when
the training rows had gaps. Categorical: missing is a level of its own; a level seen fewer than
--min-level-count times joins "other", where levels never seen in training go too (counted).
A column that is all missing or holds one value is left out. Only training rows shape it:
dev and test rows are never read here.

The stored form is schema.json (docs/contracts.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnserve.training.config import MAX_LEVELS, MIN_LEVEL_COUNT
from bnserve.training.data.cache import FeatureRows
from bnserve.training.data.columns import ColumnRows
from bnserve.training.data.mixed import NUMBER_PATTERN
from bnserve.training.errors import DataError
from bnserve.training.threads import available_cores

SCHEMA_VERSION = 1
CHUNK_BYTES = 8 << 20  # float64 values per pass over the training rows, as data/batches.py
# a text column whose present training cells are at least this share numbers is a numeric column
# with typos (3,5 or n/a): refused, never turned into hundreds of levels
NEARLY_NUMERIC = 0.95
ROW_INDEX_NAMES = ("", "Unnamed: 0", "...1", "X")
OTHER = "<other>"
MISSING = "<missing>"


@dataclass(frozen=True)
class ColumnSchema:
    """One feature column as the training rows shaped it."""

    name: str
    kind: str  # numeric | categorical | ignored
    why: str  # inferred, --numeric, --categorical, --ignore, row index, all missing, constant
    missing_count: int  # missing cells in the training rows
    fill: float | None = None  # numeric: the training mean of the present cells
    indicator: bool = False  # numeric: a 0/1 "was missing" input (the training rows had gaps)
    levels: tuple[tuple[str, int], ...] = ()  # categorical: (value, training count), sorted
    rare: tuple[tuple[str, int], ...] = ()  # categorical: levels rarer than min_level_count
    # (value, count), which "other" stands for, with levels never seen in training

    @property
    def other_count(self) -> int:
        """Training cells of the rare levels (the "other" input's training count)."""
        return sum(count for _, count in self.rare)

    @property
    def inputs(self) -> list[str]:
        """The network inputs this column becomes, in order (docs/contracts.md)."""
        if self.kind == "numeric":
            return [self.name] + ([f"{self.name}:missing"] if self.indicator else [])
        if self.kind == "categorical":
            slots = [f"{self.name}={value}" for value, _ in self.levels]
            if self.other_count:
                slots.append(f"{self.name}={OTHER}")
            if self.missing_count:
                slots.append(f"{self.name}={MISSING}")
            return slots
        return []

    def to_dict(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "why": self.why,
            "missing_count": self.missing_count,
        }
        if self.kind == "numeric":
            facts |= {"fill": self.fill, "indicator": self.indicator}
        if self.kind == "categorical":
            facts["levels"] = [{"value": value, "count": count} for value, count in self.levels]
            facts["rare"] = [{"value": value, "count": count} for value, count in self.rare]
        return facts

    @classmethod
    def from_dict(cls, facts: dict[str, Any]) -> ColumnSchema:
        def pairs(key: str) -> tuple[tuple[str, int], ...]:
            return tuple((str(item["value"]), int(item["count"])) for item in facts.get(key, []))

        fill = facts.get("fill")
        return cls(
            name=str(facts["name"]),
            kind=str(facts["kind"]),
            why=str(facts["why"]),
            missing_count=int(facts["missing_count"]),
            fill=None if fill is None else float(fill),
            indicator=bool(facts.get("indicator", False)),
            levels=pairs("levels"),
            rare=pairs("rare"),
        )


@dataclass(frozen=True)
class TableSchema:
    """Every feature column of the table, in file order, and the settings that shaped them."""

    columns: tuple[ColumnSchema, ...]
    training_rows: int
    min_level_count: int
    max_levels: int
    na_values: tuple[str, ...]
    plain: bool = False  # numbers only, no gaps in the file, nothing left out: x as it is
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        """The network's input names (D,), column by column."""
        return [name for column in self.columns for name in column.inputs]

    @property
    def needs_preprocessing(self) -> bool:
        """Anything besides standardization of a subset of the columns: a categorical column,
        a fill or an indicator (phase 2 of issue 26 folds these into the exported graph)."""
        return any(
            column.kind == "categorical" or (column.kind == "numeric" and column.fill is not None)
            for column in self.columns
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "training_rows": self.training_rows,
            "min_level_count": self.min_level_count,
            "max_levels": self.max_levels,
            "na_values": list(self.na_values),
            "plain": self.plain,
            "inputs": self.inputs,
            "columns": [column.to_dict() for column in self.columns],
        }

    @classmethod
    def from_dict(cls, facts: dict[str, Any]) -> TableSchema:
        if facts.get("version") != SCHEMA_VERSION:
            raise ValueError(f"schema version {facts.get('version')!r}, expected {SCHEMA_VERSION}")
        return cls(
            columns=tuple(ColumnSchema.from_dict(column) for column in facts["columns"]),
            training_rows=int(facts["training_rows"]),
            min_level_count=int(facts["min_level_count"]),
            max_levels=int(facts["max_levels"]),
            na_values=tuple(str(cell) for cell in facts["na_values"]),
            plain=bool(facts["plain"]),
        )

    def summary_lines(self) -> list[str]:
        """One line per column kind with its count and names (the run's output)."""
        lines = []
        for kind in ("numeric", "categorical", "ignored"):
            columns = [column for column in self.columns if column.kind == kind]
            if not columns:
                continue
            described = ", ".join(_short(column) for column in columns)
            lines.append(f"{len(columns)} {kind} column(s): {described}")
        return lines

    def describe_lines(self) -> list[str]:
        """The whole schema, one line per column (--describe)."""
        lines = [f"schema from {self.training_rows} training rows ({len(self.inputs)} inputs):"]
        for column in self.columns:
            lines.append(f"  {column.name!r}: {_long(column)}")
        return lines


def _short(column: ColumnSchema) -> str:
    if column.kind == "categorical":
        return f"{column.name} ({len(column.inputs)} levels)"
    if column.kind == "ignored":
        return f"{column.name or repr(column.name)} ({column.why})"
    gaps = f" ({column.missing_count} missing)" if column.missing_count else ""
    return f"{column.name}{gaps}"


def _long(column: ColumnSchema) -> str:
    if column.kind == "ignored":
        return f"left out ({column.why})"
    missing = f"; {column.missing_count} missing" if column.missing_count else ""
    if column.kind == "numeric":
        indicator = " + a missing indicator" if column.indicator else ""
        return f"numeric ({column.why}), fill {column.fill:.6g}{indicator}{missing}"
    shown = ", ".join(f"{value} ({count})" for value, count in column.levels[:12])
    more = f", … {len(column.levels) - 12} more" if len(column.levels) > 12 else ""
    other = (
        f"; {len(column.rare)} rare level(s) as {OTHER} ({column.other_count})"
        if column.other_count
        else ""
    )
    return f"categorical ({column.why}): {shown}{more}{other}{missing}"


# --- fitting on the training rows ---------------------------------------------------------------


@dataclass
class _Tally:
    """What one pass over the training rows finds per column."""

    missing: np.ndarray  # (F,) int64
    total: np.ndarray  # (F,) float64 sum of present numbers (stored numeric columns)
    low: np.ndarray  # (F,) float64
    high: np.ndarray  # (F,) float64
    code_counts: dict[int, np.ndarray]  # text column → (V,) int64 count per vocabulary code
    value_counts: dict[int, dict[float, int]]  # --categorical numeric column → value → count
    row_index: bool  # column 0 is 0, 1, 2, … or 1, 2, 3, … on every training row
    shift: np.ndarray | None = None  # (F,) float64 the first chunk's mean of present values
    shifted: np.ndarray | None = None  # (F,) float64 Σ (value − shift) over present values
    squares: np.ndarray | None = None  # (F,) float64 Σ (value − shift)² over present values


@dataclass(frozen=True)
class NumberMoments:
    """Per stored column (F,), the moments of its present training values, from the schema's
    one pass (shifted sums: no cancellation for values far from 0), so that the standardization
    of a filled numeric column needs no second pass over the rows (batches.fit_standardization)."""

    rows: int  # training rows
    present: np.ndarray  # (F,) int64 present cells
    total: np.ndarray  # (F,) float64 Σ value
    shift: np.ndarray  # (F,) float64
    shifted: np.ndarray  # (F,) float64 Σ (value − shift)
    squares: np.ndarray  # (F,) float64 Σ (value − shift)²
    low: np.ndarray  # (F,) float64 least present value (inf: none)
    high: np.ndarray  # (F,) float64

    def filled(self, col: int, fill: float) -> tuple[float, float, float, float]:
        """(mean, std, minimum, maximum) of column col over the training rows once its missing
        cells hold fill (the values the encoder gives), as np.mean / np.std would find them."""
        present = int(self.present[col])
        missing = self.rows - present
        mean = (float(self.total[col]) + missing * fill) / self.rows
        offset = fill - float(self.shift[col])
        # Σ (value − fill)² over present cells; missing cells (= fill) add nothing
        around_fill = (
            float(self.squares[col]) - 2 * offset * float(self.shifted[col]) + present * offset**2
        )
        variance = max(around_fill - self.rows * (mean - fill) ** 2, 0.0) / self.rows
        low, high = float(self.low[col]), float(self.high[col])
        if missing:
            low, high = min(low, fill), max(high, fill)
        return mean, variance**0.5, low, high


@dataclass
class _Part:
    """What one chunk of the training rows adds to the tally (_Tally's fields, for its rows)."""

    missing: np.ndarray  # (F,) int64
    row_index: bool
    code_counts: dict[int, np.ndarray]
    value_counts: dict[int, tuple[np.ndarray, np.ndarray]]  # col → (values, counts)
    low: np.ndarray | None = None  # (K,) of the stored number columns; None: no such column
    high: np.ndarray | None = None
    sums: np.ndarray | None = None  # (K,) float64 Σ present values
    present: np.ndarray | None = None  # (K,) int64 present cells
    shifted: np.ndarray | None = None  # (K,) Σ centered
    squares: np.ndarray | None = None  # (K,) Σ centered²


def _tally(
    x: FeatureRows,
    train: np.ndarray,
    vocabularies: Sequence[tuple[str, ...] | None],
    categorical_numbers: set[int],
) -> _Tally:
    """One pass over the training rows in chunks, several chunks at once on the cores this
    process may use; each chunk's part is added in row order, so the sums are those of one
    thread going through the chunks in turn."""
    features = x.shape[1]
    tally = _Tally(
        missing=np.zeros(features, dtype=np.int64),
        total=np.zeros(features),
        low=np.full(features, np.inf),
        high=np.full(features, -np.inf),
        code_counts={
            col: np.zeros(len(vocabulary), dtype=np.int64)
            for col, vocabulary in enumerate(vocabularies)
            if vocabulary is not None
        },
        value_counts={col: {} for col in categorical_numbers},
        row_index=True,
    )
    chunk = max(256, CHUNK_BYTES // (8 * max(1, features)))
    numbers = np.array([col for col in range(features) if col not in tally.code_counts], int)
    starts = range(0, len(train), chunk)
    if not starts:
        return tally

    def part(start: int) -> _Part:
        return _chunk_part(x, train[start : start + chunk], tally, numbers)

    _add_part(tally, part(starts[0]), numbers)  # its mean is the shift of the squares' sums
    with ThreadPoolExecutor(available_cores(), thread_name_prefix="bnserve-schema") as pool:
        for found in pool.map(part, starts[1:]):  # in row order
            _add_part(tally, found, numbers)
    return tally


def _chunk_part(x: FeatureRows, rows: np.ndarray, tally: _Tally, numbers: np.ndarray) -> _Part:
    """The part of the training rows `rows` (n,) (x's rows): the squares' sums are about
    tally.shift, or about the chunk's own mean while the tally has none (the first chunk)."""
    # (n, F) as stored; from columns F-order, each column gathered on its own
    block = x.transposed(rows).T if isinstance(x, ColumnRows) else np.asarray(x[rows])
    missing = np.isnan(block)
    found = _Part(missing.sum(axis=0), True, {}, {})
    if block.shape[1]:
        first = block[:, 0]
        found.row_index = bool(np.all(first == rows) or np.all(first == rows + 1))
    for col, counts in tally.code_counts.items():
        codes = block[:, col][~missing[:, col]].astype(np.int64)
        found.code_counts[col] = np.bincount(codes, minlength=len(counts))
    for col in tally.value_counts:
        found.value_counts[col] = np.unique(block[:, col][~missing[:, col]], return_counts=True)
    if len(numbers):
        if len(numbers) == block.shape[1]:  # x[rows] is a copy of its own: changed in place
            values, gaps = np.ascontiguousarray(block), np.ascontiguousarray(missing)
        else:  # numpy's take of columns is column-major: each column's sum pairwise
            values, gaps = block[:, numbers], missing[:, numbers]
        _number_part(found, values, gaps, tally.shift[numbers] if tally.shift is not None else None)
    return found


def _number_part(
    found: _Part, values: np.ndarray, missing: np.ndarray, shift: np.ndarray | None
) -> None:
    """Least, greatest, sum and shifted moments of the present cells of values (n, K), the
    stored number columns of a chunk (a copy: its missing cells are set to 0)."""
    found.low = np.fmin.reduce(values, axis=0)  # NaN ignored
    found.high = np.fmax.reduce(values, axis=0)
    values[missing] = 0.0
    found.sums = values.sum(axis=0, dtype=np.float64)
    found.present = len(values) - missing.sum(axis=0)
    if shift is None:  # the first chunk: the shift is its own mean
        shift = np.divide(
            found.sums, found.present, out=np.zeros(len(found.sums)), where=found.present > 0
        )
    centered = values - shift  # float64 (n, K)
    centered[missing] = 0.0
    found.shifted = centered.sum(axis=0)
    found.squares = np.einsum("ij,ij->j", centered, centered)


def _add_part(tally: _Tally, found: _Part, numbers: np.ndarray) -> None:
    """Add a chunk's part to the tally (the chunks in row order)."""
    tally.missing += found.missing
    tally.row_index = tally.row_index and found.row_index
    for col, counts in found.code_counts.items():
        tally.code_counts[col] += counts
    for col, (found_values, counts) in found.value_counts.items():
        values = tally.value_counts[col]
        for value, count in zip(found_values.tolist(), counts.tolist(), strict=True):
            values[value] = values.get(value, 0) + count
    if not len(numbers):
        return
    assert found.low is not None and found.high is not None and found.sums is not None
    assert found.shifted is not None and found.squares is not None and found.present is not None
    tally.low[numbers] = np.fmin(tally.low[numbers], found.low)
    tally.high[numbers] = np.fmax(tally.high[numbers], found.high)
    tally.total[numbers] += found.sums
    if tally.shift is None:  # the first chunk's mean: what the sums of squares are about
        features = len(tally.missing)
        tally.shift = np.zeros(features)
        tally.shift[numbers] = np.divide(
            found.sums, found.present, out=np.zeros(len(found.sums)), where=found.present > 0
        )
        tally.shifted, tally.squares = np.zeros(features), np.zeros(features)
    assert tally.shifted is not None and tally.squares is not None
    tally.shifted[numbers] += found.shifted
    tally.squares[numbers] += found.squares


def _moments(tally: _Tally, n_train: int) -> NumberMoments | None:
    if tally.shift is None or tally.shifted is None or tally.squares is None:
        return None  # no training rows
    present = n_train - tally.missing
    return NumberMoments(
        n_train, present, tally.total, tally.shift, tally.shifted, tally.squares, tally.low,
        tally.high,
    )  # fmt: skip


def number_of_cell(cell: str) -> float | None:
    """A text cell's number when it is one (as the readers parse numbers), else None."""
    import re

    if re.fullmatch(NUMBER_PATTERN, cell) is None:
        return None
    return float(np.float32(float(cell)))


def number_text(value: float) -> str:
    """A level's name for a number: 3 not 3.0; the shortest float32 text otherwise."""
    if float(value).is_integer():
        return str(int(value))
    return str(np.format_float_positional(np.float32(value), trim="-"))


@dataclass(frozen=True)
class SchemaSettings:
    """The column settings of a TrainConfig that shape the schema."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    na_values: tuple[str, ...] = ()
    min_level_count: int = MIN_LEVEL_COUNT
    max_levels: int = MAX_LEVELS


def fit_schema(
    x: FeatureRows,
    train: np.ndarray,
    names: list[str],
    vocabularies: Sequence[tuple[str, ...] | None],
    mixed: bool,
    settings: SchemaSettings,
    place: Callable[[int], str],
) -> tuple[TableSchema, NumberMoments | None]:
    """The schema of x (N, F)'s columns from the rows `train` (n,) only, and the moments of
    their present values found in the same pass (None when the columns are taken as they are,
    without a pass).

    vocabularies: per column, None (x holds numbers, NaN missing) or a text column's cells (x
    holds codes); mixed: the file had text or missing cells anywhere; place(row): "file: line L"
    for error messages. DataError for a nearly numeric column, too many levels, a name not in
    the table."""
    vocabularies = list(vocabularies) or [None] * len(names)
    named_any = settings.categorical or settings.numeric or settings.ignore
    if not mixed and not named_any and not (names and names[0] in ROW_INDEX_NAMES):
        # numbers without gaps (the readers' fast path): the columns as they are, not read again
        as_they_are = tuple(ColumnSchema(name, "numeric", "inferred", 0) for name in names)
        return TableSchema(
            as_they_are, len(train), settings.min_level_count, settings.max_levels, (), plain=True
        ), None
    for flag in ("categorical", "numeric", "ignore"):
        for name in getattr(settings, flag):
            if name not in names:
                raise DataError(f"--{flag.replace('_', '-')} {name!r}: no such column in {names}")
    numbers_as_levels = {
        col
        for col, name in enumerate(names)
        if name in settings.categorical and vocabularies[col] is None
    }
    tally = _tally(x, train, vocabularies, numbers_as_levels)
    columns = []
    for col, name in enumerate(names):
        columns.append(
            _column(col, name, vocabularies[col], tally, len(train), settings, x, train, place)
        )
        if not mixed and columns[-1].why.startswith("constant"):
            columns[-1] = ColumnSchema(name, "numeric", "inferred", 0)  # kept, as always
    plain = not mixed and all(column.kind == "numeric" for column in columns)
    if plain:
        columns = [
            ColumnSchema(column.name, "numeric", column.why, 0) for column in columns
        ]  # no fill needed: the file has no missing cell
    elif not mixed:  # numbers without gaps, some columns left out: no fill either
        columns = [
            ColumnSchema(c.name, c.kind, c.why, 0) if c.kind == "numeric" else c for c in columns
        ]
    schema = TableSchema(
        tuple(columns),
        len(train),
        settings.min_level_count,
        settings.max_levels,
        settings.na_values,
        plain,
    )
    return schema, _moments(tally, len(train))


def _column(
    col: int,
    name: str,
    vocabulary: tuple[str, ...] | None,
    tally: _Tally,
    n_train: int,
    settings: SchemaSettings,
    x: FeatureRows,
    train: np.ndarray,
    place: Callable[[int], str],
) -> ColumnSchema:
    missing = int(tally.missing[col])
    if name in settings.ignore:
        return ColumnSchema(name, "ignored", "--ignore", missing)
    if missing == n_train:
        return ColumnSchema(name, "ignored", "all missing", missing)
    named = "--numeric" if name in settings.numeric else None
    named = "--categorical" if name in settings.categorical else named
    if (
        col == 0
        and named is None
        and vocabulary is None
        and name in ROW_INDEX_NAMES
        and tally.row_index
        and missing == 0
    ):
        return ColumnSchema(name, "ignored", "row index 1, 2, 3, …", 0)
    if vocabulary is None:
        if named == "--categorical":
            counts = {number_text(value): count for value, count in tally.value_counts[col].items()}
            return _categorical(name, counts, missing, named, settings)
        return _numeric(
            name, missing, tally.total[col], tally.low[col], tally.high[col], n_train, named
        )
    counts_by_code = tally.code_counts[col]
    used = np.flatnonzero(counts_by_code)
    numbers = [number_of_cell(vocabulary[code]) for code in used.tolist()]
    text_codes = [
        code for code, number in zip(used.tolist(), numbers, strict=True) if number is None
    ]
    if named is None and not text_codes:  # numbers in training: text elsewhere is a typo
        stray = [
            code
            for code, cell in enumerate(vocabulary)
            if not counts_by_code[code] and number_of_cell(cell) is None
        ]
        if stray:
            every_row = np.arange(x.shape[0])
            _refuse_text_cell(
                name, vocabulary, stray, x, col, every_row, place, "outside the training rows"
            )
    if named == "--categorical" or (text_codes and named is None):
        if named is None and _nearly_numeric(counts_by_code, text_codes):
            present = int(counts_by_code.sum())
            text_cells = int(counts_by_code[text_codes].sum())
            share = f"{text_cells} of its {present} present training cells are text"
            _refuse_text_cell(name, vocabulary, text_codes, x, col, train, place, share)
        counts = {vocabulary[code]: int(counts_by_code[code]) for code in used.tolist()}
        return _categorical(name, counts, missing, named or "inferred", settings)
    # numbers (or --numeric: text cells become missing)
    text_cells = int(sum(counts_by_code[code] for code in text_codes))
    total = sum(
        float(number) * int(counts_by_code[code])
        for code, number in zip(used.tolist(), numbers, strict=True)
        if number is not None
    )
    parsed = [number for number in numbers if number is not None]
    low, high = (min(parsed), max(parsed)) if parsed else (np.inf, -np.inf)
    if not parsed:
        return ColumnSchema(name, "ignored", "all missing", missing + text_cells)
    return _numeric(name, missing + text_cells, total, low, high, n_train, named)


def _numeric(
    name: str,
    missing: int,
    total: float,
    low: float,
    high: float,
    n_train: int,
    named: str | None,
) -> ColumnSchema:
    if low == high and missing == 0:
        return ColumnSchema(name, "ignored", f"constant {number_text(low)}", 0)
    fill = float(total) / (n_train - missing)
    return ColumnSchema(name, "numeric", named or "inferred", missing, fill, missing > 0)


def _categorical(
    name: str, counts: dict[str, int], missing: int, why: str, settings: SchemaSettings
) -> ColumnSchema:
    if len(counts) > settings.max_levels:
        raise DataError(
            f"column {name!r} has {len(counts)} distinct levels in the training rows, more than "
            f"--max-levels {settings.max_levels} (an id or free text?): leave it out with "
            f"--ignore {name}, or raise --max-levels"
        )
    kept = tuple(
        sorted(
            (value, count) for value, count in counts.items() if count >= settings.min_level_count
        )
    )
    rare = tuple(
        sorted(
            (value, count) for value, count in counts.items() if count < settings.min_level_count
        )
    )
    column = ColumnSchema(name, "categorical", why, missing, levels=kept, rare=rare)
    if len(column.inputs) <= 1:
        single = kept[0][0] if kept else OTHER
        return ColumnSchema(name, "ignored", f"constant {single!r}", missing)
    return column


def _nearly_numeric(counts_by_code: np.ndarray, text_codes: list[int]) -> bool:
    """At least NEARLY_NUMERIC of the present training cells are numbers."""
    present = int(counts_by_code.sum())
    text_cells = int(counts_by_code[text_codes].sum())
    return present > 0 and (present - text_cells) / present >= NEARLY_NUMERIC


def _refuse_text_cell(
    name: str,
    vocabulary: tuple[str, ...],
    text_codes: list[int],
    x: FeatureRows,
    col: int,
    rows_to_scan: np.ndarray,
    place: Callable[[int], str],
    detail: str,
) -> None:
    """Raise at the first of rows_to_scan whose cell is a text code: a typo in a column of
    numbers (3,5 or n/a), with both ways out. Never turned into hundreds of levels."""
    wanted = np.array(text_codes, dtype=np.float64)
    chunk = max(256, CHUNK_BYTES // (8 * max(1, x.shape[1])))
    for start in range(0, len(rows_to_scan), chunk):
        rows = rows_to_scan[start : start + chunk]
        codes = np.asarray(x[rows], dtype=np.float64)[:, col]
        hits = np.flatnonzero(np.isin(codes, wanted))
        if hits.size:
            row = int(rows[hits[0]])
            cell = vocabulary[int(codes[hits[0]])]
            raise DataError(
                f"{place(row)}, column {name!r}: {cell!r} is not a number, in a column of "
                f"numbers ({detail}); --numeric {name} reads such cells as missing, "
                f"--categorical {name} keeps the column as text"
            )
