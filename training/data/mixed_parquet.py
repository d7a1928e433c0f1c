"""A Parquet table with text columns or missing cells, read as float32 numbers and level codes.

Text columns (string, dictionary, boolean) are held as dictionaries all the way: string columns
are read with pyarrow's read_dictionary (a dictionary page's entries as they are; plain pages
encoded by pyarrow), booleans are encoded here. Only a batch's dictionary (K entries) is trimmed
and matched against the missing tokens and the vocabulary; each row's code is then one take of
the entries' codes by the row's index. Numeric columns are read as numbers (null, NaN: missing)
and cast to float32 whole; a value that is not finite in float32 (inf, beyond float32) is found
by one check of the batch and named by its row. No Python object per cell.

Batches (BATCH_ROWS rows) are converted on several threads (readers._ordered_map) and given
their codes on the writing thread, in file order, so a vocabulary lists its cells first seen
first whatever each row group's dictionary holds (entries no row uses never enter it).
The file is read page by page (pre_buffer off), so memory stays bounded by the batch, not the
row group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bnserve.training.data import mixed
from bnserve.training.errors import DataError

# rows per record batch: at 1M rows (load ≈ 5) the read took the same CPU time with 32,768 and
# 65,536 (1.97 s each, 3 runs), and prepare() grew 366 MB with 32,768, 454 MB with 65,536 and
# 570 MB with 131,072; pre-buffering each row group grew 70-80 MB more, no faster under that load
BATCH_ROWS = 32_768


@dataclass(frozen=True)
class DictionaryColumn:
    """One batch of a text column: its dictionary's trimmed entries and each row's entry."""

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
        path, read_dictionary=strings or None, pre_buffer=False, buffer_size=1 << 20
    )


def dictionary_column(column: Any, na_values: tuple[str, ...]) -> DictionaryColumn:
    """A batch's text column (dictionary, string or boolean) in dictionary form."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        if pa.types.is_boolean(column.type):
            column = pc.cast(column, pa.string())  # "true" / "false": two levels
        column = pc.dictionary_encode(column)
    values = mixed.trimmed_strings(column.dictionary)
    missing = mixed.missing_mask(values, na_values)
    indices = np.asarray(
        pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    return DictionaryColumn([str(cell) for cell in values.to_pylist()], missing, indices)


def codes(vocabulary: mixed.Vocabulary, column: DictionaryColumn) -> np.ndarray:
    """(B,) float32: each row's code (NaN: missing); cells new to the vocabulary are added in the
    order of their first row. Only the K entries are looked up, the rows are one take."""
    entries = len(column.cells)
    code_of_entry = np.full(entries + 1, np.nan, dtype=np.float32)  # the last: null (index −1)
    new = np.zeros(entries + 1, dtype=bool)
    for entry, cell in enumerate(column.cells):
        if column.missing[entry]:
            continue
        code = vocabulary.index.get(cell)
        if code is None:
            new[entry] = True
        else:
            code_of_entry[entry] = code
    if new.any():
        import pyarrow as pa
        import pyarrow.compute as pc

        unseen = column.indices[new[column.indices]]  # rows' entries not yet in the vocabulary
        if unseen.size:
            order = pc.unique(pa.array(unseen)).to_numpy()  # hashed: first seen first
            code_of_entry[order] = vocabulary.codes_of([column.cells[e] for e in order.tolist()])
    coded: np.ndarray = code_of_entry[column.indices]
    return coded


def numbers(
    batch: Any, block: np.ndarray, numeric: list[int], names: list[str], where: Callable[[int], str]
) -> None:
    """Put the batch's numeric columns in block (B, F) float32 (null, NaN: NaN), whose other
    columns hold finite values; a cell that is inf or beyond float32 is refused, naming its row
    (where(row)) and column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    with np.errstate(over="ignore"):  # beyond float32 becomes inf: found just below
        for col in numeric:
            column = batch.column(names[col])
            if not pa.types.is_floating(column.type):
                column = pc.cast(column, pa.float64(), safe=False)  # an int64 beyond 2**53 rounds
            block[:, col] = column.to_numpy(zero_copy_only=False)  # null: NaN
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
    na_values: tuple[str, ...],
    where: Callable[[int], str],
) -> tuple[np.ndarray, dict[int, DictionaryColumn]]:
    """One record batch: (B, F) float32 with the numbers in place, and each text column's
    dictionary form (codes put in by write_batches)."""
    block = np.zeros((batch.num_rows, len(names)), dtype=np.float32)
    numbers(batch, block, [col for col in range(len(names)) if col not in text], names, where)
    texts = {col: dictionary_column(batch.column(names[col]), na_values) for col in sorted(text)}
    return block, texts


def write_batches(
    results: Iterable[Batch], vocabularies: dict[int, mixed.Vocabulary], sink: BinaryIO
) -> tuple[int, list[Any]]:
    """Give each batch's text columns their codes, in file order, and write it: (rows, target
    chunks)."""
    rows, chunks = 0, []
    for batch in results:
        for col, column in batch.texts.items():
            batch.block[:, col] = codes(vocabularies[col], column)
        sink.write(batch.block.data)
        chunks.extend(batch.target)
        rows += len(batch.block)
    return rows, chunks
