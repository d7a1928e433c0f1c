"""Tables with text columns or missing cells: each feature column as float32 numbers or codes.

The readers' fast path (readers.py) takes tables of numbers without gaps. When it meets a cell
that is not a number, it hands the file to this module, which writes the same (N, F) float32
blocks with two changes: a missing cell is NaN, and a column holding any text cell (in the
whole file) holds codes instead, the index of the trimmed cell in that column's vocabulary
(its distinct cells in first-seen order, small integers exactly representable in float32).
No Python string is kept per row: pyarrow finds each block's distinct cells, and only those
are looked up in the vocabulary.

Which cells are missing: null (Parquet), and after trimming spaces the empty cell, NA, NaN,
nan, null, NULL, None, and any --na-values. A CSV is read by mixed_csv.py (one pass, pyarrow
typing each piece's columns), a Parquet file by mixed_parquet.py (its column types say which
are text: string, dictionary and boolean columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_NA_VALUES = ("", "NA", "NaN", "nan", "null", "NULL", "None")
# an exact number as pyarrow's float parser reads it (readers.NUMBER, anchored, already trimmed)
NUMBER_PATTERN = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[iI][nN][fF]([iI][nN][iI][tT][yY])?)$"
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Vocabulary:
    """A text column's distinct trimmed cells, in first-seen order; code = position."""

    cells: list[str]
    index: dict[str, int]

    @classmethod
    def empty(cls) -> Vocabulary:
        return cls([], {})

    def codes_of(self, uniques: list[str]) -> np.ndarray:
        """The code (K,) float32 of each of a block's distinct cells, adding new ones."""
        codes = np.empty(len(uniques), dtype=np.float32)
        for position, cell in enumerate(uniques):
            code = self.index.get(cell)
            if code is None:
                code = self.index[cell] = len(self.cells)
                self.cells.append(cell)
            codes[position] = code
        return codes


@dataclass(frozen=True)
class TextPiece:
    """One block's text column: its distinct cells, each row's position among them (−1: missing)."""

    uniques: list[str]
    positions: np.ndarray  # (B,) int32


def missing_mask(trimmed: Any, na_values: tuple[str, ...]) -> np.ndarray:
    """(B,) bool: null or one of na_values, for an Arrow string array already trimmed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    listed = pc.is_in(trimmed, value_set=pa.array(list(na_values), type=pa.string()))
    missing = pc.or_kleene(pc.is_null(trimmed), pc.fill_null(listed, True))
    return np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)


def number_mask(trimmed: Any) -> np.ndarray:
    """(B,) bool: the cell is a number (nulls are not)."""
    import pyarrow.compute as pc

    matched = pc.fill_null(pc.match_substring_regex(trimmed, NUMBER_PATTERN), False)
    return np.asarray(matched.to_numpy(zero_copy_only=False), dtype=bool)


def trimmed_strings(column: Any) -> Any:
    """An Arrow column (string, dictionary or boolean) as one trimmed string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_boolean(column.type):
        return pc.cast(column, pa.string())  # "true" / "false": two levels
    return pc.utf8_trim_whitespace(column.cast(pa.string()))


def dictionary_piece_and_cells(
    column: Any, na_values: tuple[str, ...], first_seen: bool = False
) -> tuple[TextPiece, Any]:
    """text_piece of a dictionary-encoded column, from its indices: only the dictionary's
    values are trimmed and matched against na_values (not every cell). The distinct cells come
    in first-seen order, as text_piece gives them (two values equal once trimmed may both be
    listed: Vocabulary.codes_of gives them one code); they are also returned as an Arrow string
    array (K,), for checks that run in pyarrow. first_seen: the dictionary lists the cells in the
    order they first appear, each used (as pyarrow's CSV reader and dictionary_encode make it),
    so no search for that order is needed."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = trimmed_strings(column.dictionary)
    value_missing = missing_mask(values, na_values)
    indices = np.array(column.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
    present = indices >= 0
    present[present] = ~value_missing[indices[present]]
    if first_seen:
        order = np.flatnonzero(~value_missing)
    else:
        used, first = np.unique(indices[present], return_index=True)
        order = used[np.argsort(first, kind="stable")]  # dictionary entries, first seen first
    slot = np.full(len(values), -1, dtype=np.int32)
    slot[order] = np.arange(len(order), dtype=np.int32)
    positions = np.full(len(indices), -1, dtype=np.int32)
    positions[present] = slot[indices[present]]
    cells = values.take(pa.array(order, type=pa.int64()))
    return TextPiece([str(cell) for cell in cells.to_pylist()], positions), cells


def codes_column(vocabulary: Vocabulary, piece: TextPiece) -> np.ndarray:
    """(B,) float32: each row's code in the vocabulary (new cells added), NaN where missing."""
    codes = np.append(vocabulary.codes_of(piece.uniques), np.float32(np.nan))
    column: np.ndarray = codes[piece.positions]  # position −1 (missing): the NaN at the end
    return column


def is_parquet_text(kind: Any) -> bool:
    """Parquet column types read as text: strings, dictionaries (categoricals), booleans."""
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_dictionary(kind)
        or pa.types.is_boolean(kind)
    )


def vocabulary_tuple(vocabularies: dict[int, Vocabulary], n_features: int) -> tuple[Any, ...]:
    """Per feature column: its vocabulary's cells (a text column), or None (numbers)."""
    return tuple(
        tuple(vocabularies[col].cells) if col in vocabularies else None for col in range(n_features)
    )
