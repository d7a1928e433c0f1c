"""A Parquet table with text columns or missing cells, read as float32 numbers and level codes.

Text columns (string, dictionary, boolean) are held as dictionaries all the way: string columns
are read with pyarrow's read_dictionary (a dictionary page's entries as they are; plain pages
encoded by pyarrow), booleans are encoded here. Only a dictionary (K entries) is trimmed and
matched against the missing tokens and the vocabulary, once per row group (its batches carry
equal copies: Dictionaries, Coder); each row's code is then one take of the entries' codes by
the row's index. Numeric columns are read as numbers (null, NaN: missing) and cast to float32
whole; a value that is not finite in float32 (inf, beyond float32) is found by one check of the
batch and named by its row. No Python object per cell.

Batches (BATCH_ROWS rows) are converted on several threads (readers._ordered_map) and given
their codes on the thread that hands them to the sink, in file order, so a vocabulary lists its
cells first seen first whatever each row group's dictionary holds (entries no row uses never
enter it).
The file is read page by page (pre_buffer off), so memory stays bounded by the batch, not the
row group.

Read into memory instead (columns.ColumnRows, readers.read_parquet_columns), each row group is
read a few columns at a time (pieces, PIECE_BYTES) and each numeric column cast into its place
at once (put_column); the text columns are coded as above, row groups in file order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bnserve.training.data import mixed
from bnserve.training.errors import DataError

# rows per record batch: at 1M rows (load ≈ 5) the read took the same CPU time with 32,768 and
# 65,536 (1.97 s each, 3 runs), and prepare() grew 366 MB with 32,768, 454 MB with 65,536 and
# 570 MB with 131,072; pre-buffering each row group grew 70-80 MB more, no faster under that load.
# (Read into memory, batches of these sizes grew prepare() by 413-550 MB: PIECE_BYTES below.)
BATCH_ROWS = 32_768
# bytes each column's reader buffers (pre_buffer off): at 1M rows × 65 columns, 1 MiB held 129 MB
# in pyarrow's pool at most and 64 KiB 92 MB (the read's peak RSS growth 524 → 469 MB), the same
# decoding CPU time within the noise (0.89-1.04 s both, 4 runs each at load 5)
BUFFER_BYTES = 64 << 10
SUB_ROWS = 4_096  # rows of a batch whose numbers are put in place together (1 MiB at 64 columns)


@dataclass(frozen=True)
class DictionaryColumn:
    """One batch of a text column: its dictionary's trimmed entries and each row's entry.

    cells and missing are shared by the batches whose dictionaries are equal (Dictionaries):
    the same objects, so the thread giving the codes knows them again by identity (Coder)."""

    cells: list[str]  # (K,) trimmed entries (two may be equal once trimmed)
    missing: np.ndarray  # (K,) bool: the entry is a missing token (na_values)
    indices: np.ndarray  # (B,) int64 entry of each row, −1 for null


@dataclass(frozen=True)
class Batch:
    """One converted record batch: numbers in place (text columns still to be coded), each text
    column's dictionary form, and the target's trimmed cells."""

    block: np.ndarray  # (B, F) float32
    texts: dict[int, DictionaryColumn]
    target: list[Any]  # Arrow string arrays


def open_file(path: Path, names: list[str]) -> Any:
    """pq.ParquetFile with the string feature columns read as dictionaries, read page by page
    (pre_buffer off: a row group is never held whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    strings = [
        name
        for name in names
        if pa.types.is_string(schema.field(name).type)
        or pa.types.is_large_string(schema.field(name).type)
    ]
    return pq.ParquetFile(
        path, read_dictionary=strings or None, pre_buffer=False, buffer_size=BUFFER_BYTES
    )


class Dictionaries:
    """Each text column's last dictionary with its entries trimmed and matched against the
    missing tokens. The batches of a row group carry equal dictionaries (copies): compared by
    value (Arrow's equals, K entries), they are matched once per row group, not per batch.
    Shared by the converting threads."""

    def __init__(self, na_values: tuple[str, ...]) -> None:
        self.na_values = na_values
        self._last: dict[int, tuple[Any, list[str], np.ndarray]] = {}
        self._lock = threading.Lock()

    def entries(self, col: int, dictionary: Any) -> tuple[list[str], np.ndarray]:
        """(cells (K,), missing (K,) bool) of text column col's dictionary (an Arrow array)."""
        with self._lock:
            last = self._last.get(col)
        if last is not None and last[0].equals(dictionary):
            return last[1], last[2]
        values = mixed.trimmed_strings(dictionary)
        missing = mixed.missing_mask(values, self.na_values)
        cells = [str(cell) for cell in values.to_pylist()]
        with self._lock:
            self._last[col] = (dictionary, cells, missing)
        return cells, missing


def dictionary_column(column: Any, col: int, dictionaries: Dictionaries) -> DictionaryColumn:
    """A batch's text column (dictionary, string or boolean) in dictionary form."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        if pa.types.is_boolean(column.type):
            column = pc.cast(column, pa.string())  # "true" / "false": two levels
        column = pc.dictionary_encode(column)
    cells, missing = dictionaries.entries(col, column.dictionary)
    indices = np.asarray(
        pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    return DictionaryColumn(cells, missing, indices)


class Coder:
    """A text column's codes, given on the writing thread in file order: its vocabulary, and
    the code of each entry of the dictionary last seen (looked up once per dictionary)."""

    def __init__(self) -> None:
        self.vocabulary = mixed.Vocabulary.empty()
        self.cells: list[str] | None = None  # the entries the codes below are for
        self.code_of_entry = np.zeros(0, dtype=np.float32)  # (K + 1,) the last: null (−1)
        self.new = np.zeros(0, dtype=bool)  # (K + 1,) the entry's cell is not in the vocabulary

    def codes(self, column: DictionaryColumn) -> np.ndarray:
        """(B,) float32: each row's code (NaN: missing); cells new to the vocabulary are added
        in the order of their first row. Only the K entries are looked up, the rows are one
        take."""
        if column.cells is not self.cells:
            self._look_up(column)
        if self.new.any():
            unseen = column.indices[self.new[column.indices]]  # rows' entries not yet coded
            if unseen.size:
                import pyarrow as pa
                import pyarrow.compute as pc

                order = pc.unique(pa.array(unseen)).to_numpy()  # hashed: first seen first
                cells = [column.cells[e] for e in order.tolist()]
                self.code_of_entry[order] = self.vocabulary.codes_of(cells)
                self.new[order] = False
        coded: np.ndarray = self.code_of_entry[column.indices]
        return coded

    def _look_up(self, column: DictionaryColumn) -> None:
        entries = len(column.cells)
        self.cells = column.cells
        self.code_of_entry = np.full(entries + 1, np.nan, dtype=np.float32)
        self.new = np.zeros(entries + 1, dtype=bool)
        for entry, cell in enumerate(column.cells):
            if column.missing[entry]:
                continue
            code = self.vocabulary.index.get(cell)
            if code is None:
                self.new[entry] = True
            else:
                self.code_of_entry[entry] = code


def _float_values(column: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric Arrow array as (values (B,) floats, a view of its data where it can be; missing
    (B,) bool of its nulls, or None). Integers are cast to float64 (beyond 2**53 they round);
    the values of null slots are whatever the buffer holds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_floating(column.type):
        column = pc.cast(column, pa.float64(), safe=False)
    buffers = column.buffers()
    if len(buffers) != 2 or buffers[1] is None:
        return np.asarray(column.to_numpy(zero_copy_only=False)), None  # null: NaN
    dtype = np.dtype(column.type.to_pandas_dtype())
    count, offset = len(column), column.offset
    values = np.frombuffer(buffers[1], dtype=dtype, count=count, offset=offset * dtype.itemsize)
    if not column.null_count:
        return values, None
    bits = np.frombuffer(buffers[0], dtype=np.uint8)
    valid = np.unpackbits(bits, count=offset + count, bitorder="little")[offset:]
    return values, valid == 0


def numbers(
    batch: Any, block: np.ndarray, numeric: list[int], names: list[str], where: Callable[[int], str]
) -> None:
    """Put the batch's numeric columns in block (B, F) float32 (null, NaN: NaN), whose other
    columns hold finite values; a cell that is inf or beyond float32 is refused, naming its row
    (where(row)) and column.

    The columns are put in SUB_ROWS rows at a time, so the rows written stay in the core's
    cache while each column's strided write goes through them."""
    columns = [(col, *_float_values(batch.column(names[col]))) for col in numeric]
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: found just below
        for start in range(0, len(block), SUB_ROWS):
            rows = slice(start, start + SUB_ROWS)
            for col, values, _ in columns:
                block[rows, col] = values[rows]
    for col, _, missing in columns:
        if missing is not None:  # a null slot's value is any bytes: set after the copy
            np.copyto(block[:, col], np.nan, where=missing)
    if np.isinf(block).any():  # text columns hold 0 until their codes are put in
        for col in numeric:
            _refuse_not_finite(batch.column(names[col]), names[col], where)


def _refuse_not_finite(column: Any, name: str, where: Callable[[int], str]) -> None:
    """DataError at the column's first value that is inf or beyond float32, if any."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = np.asarray(
        pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False), np.float64
    )
    with np.errstate(invalid="ignore"):
        bad = np.isinf(values) | (np.abs(values) > mixed.FLOAT32_MAX)
    if bad.any():
        row = int(np.argmax(bad))
        cell = pc.cast(column.slice(row, 1), pa.string())[0].as_py()
        beyond = " (beyond float32)" if np.isfinite(values[row]) else ""
        raise DataError(f"{where(row)}, column {name!r}: {cell!r} is not finite{beyond}")


def convert(
    batch: Any,
    names: list[str],
    text: set[int],
    dictionaries: Dictionaries,
    where: Callable[[int], str],
) -> tuple[np.ndarray, dict[int, DictionaryColumn]]:
    """One record batch: (B, F) float32 with the numbers in place, and each text column's
    dictionary form (codes put in by write_batches)."""
    block = np.zeros((batch.num_rows, len(names)), dtype=np.float32)
    numbers(batch, block, [col for col in range(len(names)) if col not in text], names, where)
    texts = {
        col: dictionary_column(batch.column(names[col]), col, dictionaries) for col in sorted(text)
    }
    return block, texts


def write_batches(
    results: Iterable[Batch], coders: dict[int, Coder], sink: BinaryIO
) -> tuple[int, list[Any]]:
    """Give each batch's text columns their codes, in file order, and write it: (rows, target
    chunks)."""
    rows, chunks = 0, []
    for batch in results:
        for col, column in batch.texts.items():
            batch.block[:, col] = coders[col].codes(column)
        sink.write(batch.block.data)
        chunks.extend(batch.target)
        rows += len(batch.block)
    return rows, chunks


# --- column by column, into a table held in memory (columns.ColumnRows) ---------------------------

# A row group is read a few columns at a time (read_row_group decodes each column chunk whole, on
# pyarrow's threads): at 1M rows in 4 row groups, 8 or 16 columns at a time took 0.58-0.83 CPU s
# and grew 95-124 MB where iter_batches of 32,768 rows took 0.90-1.27 and grew 164 (3 runs each,
# load 7); batches of 16,384 / 32,768 / 65,536 rows into the columns had grown prepare() by
# 413-416 / 466-468 / 519-550 MB (the columns: 244 MB), against 366-385 MB now. At most this many
# float64 bytes of a row group are decoded at once (at least 1 column).
PIECE_BYTES = 16 << 20


@dataclass(frozen=True)
class Piece:
    """Columns `names` of row group `group`, whose first row is `first_row` in the file."""

    group: int
    first_row: int
    rows: int
    names: list[str]


def pieces(metadata: Any, names: list[str]) -> list[Piece]:
    """The row groups in file order, each cut into runs of columns (in `names`' order) of at most
    PIECE_BYTES as float64, so memory stays bounded whatever a row group's size."""
    found, first_row = [], 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        width = max(1, PIECE_BYTES // max(1, 8 * rows))
        for start in range(0, len(names), width):
            found.append(Piece(group, first_row, rows, names[start : start + width]))
        first_row += rows
    return found


def put_column(chunks: Any, out: np.ndarray, name: str, where: Callable[[int], str]) -> None:
    """A numeric column's chunks (an Arrow ChunkedArray) cast into out (rows,) float32: null and
    NaN give NaN; a cell that is inf or beyond float32 is refused, naming its row (where(row),
    from the column's first row) and the column."""
    start = 0
    for chunk in chunks.chunks:
        values, missing = _float_values(chunk)
        part = out[start : start + len(chunk)]
        with np.errstate(over="ignore"):  # beyond float32 becomes inf: found just below
            np.copyto(part, values, casting="unsafe")
        if missing is not None:  # a null slot's value is any bytes: set after the copy
            np.copyto(part, np.nan, where=missing)
        if np.isinf(part).any():
            _refuse_not_finite(chunk, name, _shifted(where, start))
        start += len(chunk)


def _shifted(where: Callable[[int], str], offset: int) -> Callable[[int], str]:
    """where() of rows counted from `offset`."""
    return lambda row: where(offset + row)
