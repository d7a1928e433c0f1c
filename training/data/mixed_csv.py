"""A mixed CSV (text columns, missing cells) read in one pass: pyarrow parses and types the cells.

Each piece of the file (readers._line_pieces) is parsed by pyarrow with type inference: a column
whose cells are all numbers or missing (na_values: null) comes back as float64 or int64 and is
taken as it is; a column with any other cell comes back dictionary-encoded, and only its
dictionary (the piece's distinct cells) is trimmed, matched against the missing tokens and the
number pattern (mixed.NUMBER_PATTERN): no Python string per cell. A column is text when any
present cell in the whole file is neither a number nor missing, as mixed.py's module docstring
says; its cells become codes in first-seen order (mixed.Vocabulary).

Pieces are converted on several threads and written in order (write_csv_pieces). A column found
to hold text after some of its pieces were written as numbers raises Restart: the caller reads
the file again with that column read as text from the first piece (a typo deep in a column of
numbers costs one more pass; schema.py then refuses it or keeps it by the flags). Cells that are
not finite numbers (inf, beyond float32) are refused with their line, but only at the end, when
the column is known to be numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from bnserve.training.data import mixed
from bnserve.training.errors import DataError

# most distinct cells of a text column in one piece that pyarrow keeps dictionary-encoded
# (a piece has far fewer rows than this; beyond it a plain string column is encoded here)
DICTIONARY_CARDINALITY = 1 << 30


class Restart(Exception):
    """Columns (positions in the feature list) found to hold text after numbers were written."""

    def __init__(self, columns: set[int]) -> None:
        super().__init__(f"text found late in columns {sorted(columns)}")
        self.columns = columns


@dataclass(frozen=True)
class ColumnPiece:
    """One piece of one feature column."""

    present: bool  # any cell not missing
    has_text: bool  # a present cell that is not a number (or the column was read as text)
    numbers: np.ndarray | None  # (B,) float32, NaN missing; None when has_text
    text: mixed.TextPiece | None  # distinct trimmed cells and positions; None when read as numbers
    bad: tuple[int, str, bool] | None  # first cell not a finite float32: (row, cell, finite)


@dataclass(frozen=True)
class CsvPiece:
    """One piece of the file, converted: its bytes (to read a column again as text), its rows,
    each feature column, and the target's trimmed cells (missing: "")."""

    data: bytes
    rows: int
    columns: list[ColumnPiece]
    target: list[Any]


def convert_options(
    header: list[str], target_name: str, text_names: Iterable[str], na_values: tuple[str, ...]
) -> Any:
    """pyarrow's options: the target and `text_names` as text, the other columns inferred
    (numbers, or dictionary-encoded text); na_values are null; no booleans."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    types = {name: pa.dictionary(pa.int32(), pa.string()) for name in text_names}
    return pa_csv.ConvertOptions(
        column_types={**types, target_name: pa.string()},
        null_values=list(na_values),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        true_values=[],
        false_values=[],
        auto_dict_encode=True,
        auto_dict_max_cardinality=DICTIONARY_CARDINALITY,
    )


def convert_piece(
    table: Any,
    reparse: Callable[[list[str]], Any],
    names: list[str],
    text_names: frozenset[str],
    target_name: str,
    na_values: tuple[str, ...],
) -> tuple[list[ColumnPiece], list[Any]]:
    """A parsed piece's feature columns and target chunks. reparse(names) parses the piece
    again with those columns as text (dates, and numbers that are not finite, whose text is
    needed for the message)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: list[ColumnPiece | None] = []
    again: list[int] = []
    for col, name in enumerate(names):
        column = table.column(name)
        piece = None
        if name in text_names or _is_text(column.type):
            piece = text_column(column, na_values, name in text_names)
        elif _is_number(column.type):
            piece = number_column(column)
        if piece is None:
            again.append(col)
        columns.append(piece)
    if again:
        retyped = reparse([names[col] for col in again])
        for col in again:
            columns[col] = text_column(retyped.column(names[col]), na_values, False)
    target = pc.fill_null(pc.utf8_trim_whitespace(table.column(target_name)), "")
    assert all(piece is not None for piece in columns)
    chunks = target.chunks if isinstance(target, pa.ChunkedArray) else [target]
    return [piece for piece in columns if piece is not None], chunks


def number_column(column: Any) -> ColumnPiece | None:
    """A column pyarrow read as numbers (int64, float64, or all null); None when a present
    value is not a finite float32 (NaN, inf, beyond float32: its text decides)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    if pa.types.is_null(column.type):
        return ColumnPiece(False, False, np.full(rows, np.nan, np.float32), None, None)
    # nulls come back as NaN; a present value that is NaN, inf or beyond float32 makes one more
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = int(np.count_nonzero(~(np.abs(values) <= mixed.FLOAT32_MAX)))
    if bad > column.null_count:
        return None
    present = column.null_count < rows
    return ColumnPiece(present, False, values.astype(np.float32), None, None)


def text_column(column: Any, na_values: tuple[str, ...], as_text: bool) -> ColumnPiece:
    """A column pyarrow read as text (dictionary or string): its distinct cells are trimmed and
    matched; when all present ones are numbers (and as_text is false), the piece is numbers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column.cast(pa.string()))
    piece, cells = mixed.dictionary_piece_and_cells(column, na_values, first_seen=True)
    present = bool(len(piece.uniques))
    if as_text or not present:
        return ColumnPiece(present, as_text and present, None, piece, None)
    is_number = mixed.number_mask(cells)
    if not is_number.all():
        return ColumnPiece(True, True, None, piece, None)
    values = np.array(pc.cast(cells, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    finite = np.abs(values) <= mixed.FLOAT32_MAX
    numbers = np.full(len(piece.positions), np.nan, dtype=np.float32)
    where = piece.positions >= 0
    numbers[where] = np.where(finite, values, np.nan)[piece.positions[where]]
    bad = None
    if not finite.all():
        wrong = where.copy()
        wrong[where] = ~finite[piece.positions[where]]
        row = int(np.argmax(wrong))
        position = int(piece.positions[row])
        bad = (row, piece.uniques[position], bool(np.isfinite(values[position])))
    return ColumnPiece(True, False, numbers, piece, bad)


def write_csv_pieces(
    pieces: Iterable[CsvPiece],
    names: list[str],
    text: set[int],
    reparse: Callable[[bytes, list[str]], Any],
    na_values: tuple[str, ...],
    sink: BinaryIO,
    on_text: Callable[[str], None],
) -> tuple[int, list[Any], dict[int, mixed.Vocabulary], tuple[int, int, str, bool] | None]:
    """Write each piece's (B, F) float32 block in file order: numbers, or the codes of a text
    column. text: the columns known to be text (a Restart adds to it); on_text(name) is told of
    each column found to be text, so pieces parsed later read it as text.

    Returns (rows, target chunks, vocabularies of the text columns, the first cell that is not a
    finite float32 in a column of numbers: (row, column, cell, finite) or None)."""
    state = dict.fromkeys(text, "text")
    vocabularies = {col: mixed.Vocabulary.empty() for col in text}
    rows, chunks = 0, []
    first_bad: tuple[int, int, str, bool] | None = None
    for piece in pieces:
        block = np.empty((piece.rows, len(names)), dtype=np.float32)
        for col, column in enumerate(piece.columns):
            if not column.present:
                block[:, col] = np.nan
                continue
            if column.has_text and state.get(col) == "numbers":
                raise Restart({col})
            if column.has_text and col not in state:
                state[col] = "text"
                vocabularies[col] = mixed.Vocabulary.empty()
                on_text(names[col])
            if state.get(col) != "text":
                state[col] = "numbers"
                assert column.numbers is not None
                block[:, col] = column.numbers
                if column.bad is not None and first_bad is None:
                    first_bad = (rows + column.bad[0], col, column.bad[1], column.bad[2])
                continue
            text_piece = column.text
            if text_piece is None:  # read as numbers before the column was known to be text
                retyped = reparse(piece.data, [names[col]]).column(names[col])
                text_piece = text_column(retyped, na_values, True).text
            assert text_piece is not None
            block[:, col] = mixed.codes_column(vocabularies[col], text_piece)
        sink.write(block.data)
        chunks.extend(piece.target)
        rows += piece.rows
    return rows, chunks, vocabularies, first_bad


def refuse_bad_cell(
    first_bad: tuple[int, int, str, bool] | None, names: list[str], where: Callable[[int], str]
) -> None:
    """Raise the one-line error for a cell that is not a finite float32 in a numbers column."""
    if first_bad is None:
        return
    row, col, cell, finite = first_bad
    beyond = " (beyond float32)" if finite else ""
    raise DataError(f"{where(row)}, column {names[col]!r}: {cell!r} is not finite{beyond}")


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_dictionary(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
    )


def _is_number(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind))
