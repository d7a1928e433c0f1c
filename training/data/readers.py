"""Columnar readers for CSV (plain or gzip) and Parquet: float32 features, streamed block by block.

pyarrow reads each block column by column; the features go straight into row-major float32
blocks written to a binary sink (the cache file, or memory), never into a Python list of rows.
Blocks are made on several threads (a CSV piece is parsed and converted on one; a Parquet
batch, decoded by pyarrow's own threads, is converted on one) and written in order.
The target column is kept as trimmed strings and turned into (unique cells, per-row codes).

Errors name the file, the place and the column. CSV lines are counted as in the file (the
header is line 1); Parquet rows count from 0 like an array. When pyarrow's fast path fails, or
finds a value that is not allowed, the CSV is scanned again with the csv module to find the
first bad line, so the message is the same whichever check caught it.
"""

from __future__ import annotations

import codecs
import collections
import csv
import gzip
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import numpy as np

from bnserve.header_hints import closest, delimiter_hint
from bnserve.training.data import mixed, mixed_csv, mixed_parquet
from bnserve.training.data.columns import ColumnRows
from bnserve.training.data.mixed import DEFAULT_NA_VALUES
from bnserve.training.errors import DataError
from bnserve.training.threads import available_cores

if TYPE_CHECKING:  # pyarrow ships no type information: these names are Any to mypy
    import pyarrow as pa


# CSV pieces are parsed at once, each by one thread; READ_THREADS + 1 of them (and their float32
# blocks) are in flight. pyarrow's own streaming reader parses on one thread only.
BLOCK_BYTES = 1 << 20
MIXED_BLOCK_BYTES = 2 << 20  # a mixed CSV's pieces (measured against 1 and 4 MiB at 100k rows)
PARQUET_BATCH_ROWS = 32_768
READ_THREADS = 4  # at most, and never more than the cores this process may use
_Piece = TypeVar("_Piece")
_Result = TypeVar("_Result")
FLOAT32_MAX = float(np.finfo(np.float32).max)
# What pyarrow's float parser accepts (and so what a feature cell may be): decimal notation,
# nan and inf, surrounding spaces. Python's float() would also take "1_0" or non-ASCII digits.
NUMBER = re.compile(r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)\s*", re.I)


@dataclass(frozen=True)
class Target:
    """A target column as unique trimmed cells (first-seen order) and a code (N,) per row."""

    cells: list[str]
    codes: np.ndarray  # (N,) int32 or int64 index into cells


@dataclass(frozen=True)
class TableInfo:
    """What a reader found besides the feature bytes it wrote."""

    rows: int
    feature_names: list[str]
    target_name: str
    target: Target
    # per feature column: None (numbers; NaN where missing) or a text column's vocabulary (its
    # distinct trimmed cells, first seen first; the column holds the cell's index as float32)
    vocabularies: tuple[tuple[str, ...] | None, ...] = ()
    mixed: bool = False  # read by mixed.py: text columns or missing cells somewhere


def one_line(error: BaseException) -> str:
    """An error's message on one line: pyarrow's may span lines and quote raw bytes of a
    damaged file ("don't know what type: \\x0f\\nDeserializing page header failed.")."""
    printable = "".join(c if c.isprintable() or c.isspace() else repr(c)[1:-1] for c in str(error))
    return " ".join(printable.split())


def is_csv(path: Path) -> bool:
    """A .csv or .csv.gz path."""
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def is_parquet(path: Path) -> bool:
    """A .parquet or .pq path."""
    return path.suffix.lower() in (".parquet", ".pq")


def read_table(
    path: Path,
    target: str | None,
    sink: BinaryIO,
    delimiter: str = ",",
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES,
) -> TableInfo:
    """Write the features of a CSV/Parquet file to `sink` as (N, F) float32 C-order bytes.

    delimiter: a CSV's field separator (one character). A table of numbers without gaps is read
    once, by the fast path; any other cell sends the whole file to mixed.py (sink rewound: it
    must support seek and truncate), whose columns hold numbers with NaN for missing cells
    (na_values), or a text column's codes (TableInfo.vocabularies)."""
    import pyarrow as pa

    try:
        try:
            if is_parquet(path):
                return _read_parquet(path, target, sink)
            return _read_csv(path, target, sink, delimiter)
        except _NotNumbers:
            sink.seek(0)
            sink.truncate()
            if is_parquet(path):
                return _read_parquet_mixed(path, target, sink, na_values)
            return _read_csv_mixed(path, target, sink, delimiter, na_values)
    finally:
        pa.default_memory_pool().release_unused()  # the blocks are gone: give their pages back


# --- CSV ----------------------------------------------------------------------------------------


def _open_bytes(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """The file's bytes, unzipped when it ends in .gz (the caller closes it)."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _open_text(path: Path) -> io.TextIOBase:
    return io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline="")


def _read_header(path: Path, delimiter: str) -> list[str]:
    try:
        with _open_text(path) as handle:
            first = next(csv.reader(handle, delimiter=delimiter), [])
    except UnicodeDecodeError:
        _raise_decode_error(path)
    except (OSError, EOFError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV ({one_line(error)})") from None
    return [name.strip() for name in first]


def _columns(
    path: Path, header: list[str], target: str | None, delimiter: str = ","
) -> tuple[str, list[int], int]:
    """(target name, feature column indices, target column index); refuses bad headers."""
    if not header or not any(header):
        raise DataError(f"{path}: empty file (a header line is needed)")
    if hint := delimiter_hint(header, delimiter):
        raise DataError(f"{path}: line 1: {hint}")
    seen: dict[str, int] = {}
    for col, name in enumerate(header):
        if name in seen:
            raise DataError(
                f"{path}: duplicate column name {name!r} (columns {seen[name] + 1} and {col + 1})"
            )
        seen[name] = col
    target_name = target if target is not None else header[-1]
    if target_name not in seen:
        raise DataError(
            f"{path}: target column {target_name!r} is not in the header; "
            f"{closest(target_name, header)}"
        )
    target_col = seen[target_name]
    feature_cols = [col for col in range(len(header)) if col != target_col]
    if not feature_cols:
        raise DataError(f"{path}: no feature columns besides the target {target_name!r}")
    return target_name, feature_cols, target_col


def _read_csv(path: Path, target: str | None, sink: BinaryIO, delimiter: str) -> TableInfo:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    header = _read_header(path, delimiter)
    target_name, feature_cols, _ = _columns(path, header, target, delimiter)
    parse_options = pa_csv.ParseOptions(delimiter=delimiter)
    names = [header[col] for col in feature_cols]
    convert = pa_csv.ConvertOptions(
        column_types={**{name: pa.float32() for name in names}, target_name: pa.string()},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )

    def parse(piece: bytes) -> tuple[np.ndarray, list[pa.Array]]:
        read = pa_csv.ReadOptions(column_names=header, use_threads=False, block_size=len(piece))
        table = pa_csv.read_csv(
            pa.py_buffer(piece),
            read_options=read,
            parse_options=parse_options,
            convert_options=convert,
        )
        block = _feature_block(table, names)
        if not np.isfinite(block).all():
            raise _NotFinite
        return block, _trimmed(table.column(target_name)).chunks

    try:
        with _open_bytes(path) as raw:
            rows, chunks = _write_blocks(_ordered_map(parse, _line_pieces(raw)), sink)
    except _NotFinite:
        raise _NotNumbers from None  # NaN is a missing cell; inf is refused by mixed.py
    except pa.ArrowInvalid as error:
        if "conversion error" in str(error).lower():
            raise _NotNumbers from None  # text or an empty cell: mixed.py reads it
        locate_csv_problem(path, target, delimiter)  # a ragged line or bad bytes: named here
        raise DataError(f"{path}: not a readable CSV ({one_line(error)})") from None
    except (UnicodeDecodeError, OSError, EOFError) as error:
        locate_csv_problem(path, target, delimiter)  # a gzip file cut short: pyarrow's OSError
        raise DataError(f"{path}: not a readable CSV ({one_line(error)})") from None
    codes_target = _encode(chunks)
    if any(_bad_target_cell(cell) for cell in codes_target.cells):
        _fail(path, target, f"column {target_name!r} has a non-finite target", delimiter)
    return TableInfo(rows, names, target_name, codes_target)


def _read_csv_mixed(
    path: Path, target: str | None, sink: BinaryIO, delimiter: str, na_values: tuple[str, ...]
) -> TableInfo:
    """The CSV as numbers and codes, in one pass (mixed_csv.py); again from the start, with
    those columns read as text, when a column shows text after numbers were written."""
    header = _read_header(path, delimiter)
    _, feature_cols, _ = _columns(path, header, target, delimiter)
    names = [header[col] for col in feature_cols]
    text: set[int] = set()
    while True:
        try:
            return _read_csv_mixed_pass(path, target, sink, delimiter, na_values, names, text)
        except mixed_csv.Restart as restart:
            text |= restart.columns
            sink.seek(0)
            sink.truncate()


def _read_csv_mixed_pass(
    path: Path,
    target: str | None,
    sink: BinaryIO,
    delimiter: str,
    na_values: tuple[str, ...],
    names: list[str],
    text: set[int],
) -> TableInfo:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    header = _read_header(path, delimiter)
    target_name, _, _ = _columns(path, header, target, delimiter)
    parse_options = pa_csv.ParseOptions(delimiter=delimiter)
    text_names = {names[col] for col in text}

    def parse(piece: bytes, as_text: Iterable[str]) -> Any:
        read = pa_csv.ReadOptions(column_names=header, use_threads=False, block_size=len(piece))
        return pa_csv.read_csv(
            pa.py_buffer(piece),
            read_options=read,
            parse_options=parse_options,
            convert_options=mixed_csv.convert_options(header, target_name, as_text, na_values),
        )

    def convert(work: tuple[bytes, frozenset[str]]) -> mixed_csv.CsvPiece:
        piece, known = work
        table = parse(piece, known)

        def again(more: list[str]) -> Any:
            return parse(piece, known | set(more))

        columns, target_chunks = mixed_csv.convert_piece(
            table, again, names, known, target_name, na_values
        )
        return mixed_csv.CsvPiece(piece, table.num_rows, columns, target_chunks)

    def pieces(raw: io.BufferedIOBase) -> Iterator[tuple[bytes, frozenset[str]]]:
        for piece in _line_pieces(raw, MIXED_BLOCK_BYTES):
            yield piece, frozenset(text_names)  # the text columns known when it is parsed

    try:
        with _open_bytes(path) as raw:
            rows, chunks, vocabularies, first_bad = mixed_csv.write_csv_pieces(
                _ordered_map(convert, pieces(raw)),
                names,
                text,
                lambda piece, more: parse(piece, text_names | set(more)),
                na_values,
                sink,
                text_names.add,
            )
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError, EOFError) as error:
        locate_csv_problem(path, target, delimiter)
        raise DataError(f"{path}: not a readable CSV ({one_line(error)})") from None

    def where(row: int) -> str:
        return f"{path}: line {csv_line_of_row(path, row, delimiter)}"

    mixed_csv.refuse_bad_cell(first_bad, names, where)
    codes_target = _encode(chunks)
    if any(_bad_target_cell(cell) for cell in codes_target.cells):
        _fail(path, target, f"column {target_name!r} has a non-finite target", delimiter)
    return TableInfo(
        rows,
        names,
        target_name,
        codes_target,
        mixed.vocabulary_tuple(vocabularies, len(names)),
        mixed=True,
    )


def csv_line_of_row(path: Path, row: int, delimiter: str = ",") -> int:
    """The line number (header = 1) of data row `row` (from 0), counting as pyarrow does:
    blank lines are skipped, a quoted cell may span lines."""
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        next(reader, None)
        seen = 0
        line = reader.line_num
        for cells in reader:
            if not cells:
                line = reader.line_num
                continue
            if seen == row:
                return line + 1
            seen += 1
            line = reader.line_num
    return row + 2


class _NotFinite(Exception):
    """A block holds NaN or Inf (the rescan names the line)."""


class _NotNumbers(Exception):
    """A feature cell is not a number, or missing: the file is read by mixed.py instead."""


def _line_pieces(raw: io.BufferedIOBase, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The file after its first line (the header), in pieces of about block_bytes that each end
    at a line break.

    As in pyarrow's own parallel reader (newlines_in_values off), a line break ends a row. It
    may be \\n, \\r\\n or a lone \\r; a piece cut between \\r and \\n starts with an empty line,
    which pyarrow skips.
    """
    carry, in_header = b"", True
    while chunk := raw.read(block_bytes):
        piece = carry + chunk
        if in_header:
            ends = [at for at in (piece.find(b"\n"), piece.find(b"\r")) if at >= 0]
            if not ends:
                carry = piece  # a header longer than a block: read on
                continue
            piece, in_header = piece[min(ends) + 1 :], False
        cut = max(piece.rfind(b"\n"), piece.rfind(b"\r")) + 1
        if cut == 0:
            carry = piece  # a line longer than a block: read on
            continue
        carry = piece[cut:]
        yield piece[:cut]
    if carry and not in_header:
        yield carry


def _ordered_map(
    work: Callable[[_Piece], _Result], pieces: Iterable[_Piece], threads: int | None = None
) -> Iterator[_Result]:
    """work(piece) for each piece on `threads` threads (None: READ_THREADS, at most the cores),
    yielded in the pieces' order.

    At most threads + 1 pieces are in flight, so memory stays bounded by the piece size (one
    thread: it works one piece ahead of the caller). A failure is raised where its result would
    have been yielded; the rest are cancelled.
    """
    if threads is None:
        threads = max(1, min(READ_THREADS, available_cores()))
    with ThreadPoolExecutor(threads, thread_name_prefix="bnserve-read") as pool:
        pending: collections.deque[Future[_Result]] = collections.deque()
        try:
            for piece in pieces:
                pending.append(pool.submit(work, piece))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _write_blocks(
    results: Iterable[tuple[np.ndarray, list[pa.Array]]], sink: BinaryIO
) -> tuple[int, list[pa.Array]]:
    """Write each (block, target chunks) result's block to sink, in order: (rows, all chunks)."""
    rows = 0
    chunks: list[pa.Array] = []
    for block, target_chunks in results:
        sink.write(block.data)
        chunks.extend(target_chunks)
        rows += len(block)
    return rows, chunks


def _fail(path: Path, target: str | None, reason: str, delimiter: str) -> None:
    """Raise the slow scan's exact message, or `reason` if the scan finds nothing wrong."""
    locate_csv_problem(path, target, delimiter)
    raise DataError(f"{path}: {reason}")


def _feature_block(table: pa.Table, names: list[str]) -> np.ndarray:
    """(N, F) float32, filled column by column from an Arrow table of float32 columns."""
    block = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for out_col, name in enumerate(names):
        start = 0
        for chunk in table.column(name).chunks:
            block[start : start + len(chunk), out_col] = _numbers(chunk)
            start += len(chunk)
    return block


def _numbers(array: pa.Array) -> np.ndarray:
    """A numeric Arrow array without nulls as a numpy view of its data buffer.

    Array.to_numpy consults pandas when it is installed (importing it costs about a second).
    """
    if array.null_count:
        raise ValueError("an array with nulls has no plain numpy view")
    dtype = np.dtype(array.type.to_pandas_dtype())
    data = array.buffers()[1]
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _trimmed(column: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    return pc.utf8_trim_whitespace(column)


def _encode(chunks: list[pa.Array]) -> Target:
    """Unique trimmed cells (first seen first) and each row's code. Integer chunks (a Parquet
    target of integers without nulls) are encoded as numbers and only their distinct values
    written out: str(int) is pyarrow's cast of it to a string, so the cells and codes are those
    of the strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if chunks and all(pa.types.is_integer(chunk.type) for chunk in chunks):
        numbers = pa.chunked_array(chunks, type=pa.int64())
        distinct = pc.unique(numbers)
        codes = _numbers(pc.index_in(numbers, value_set=distinct).combine_chunks())
        dtype = np.int32 if len(distinct) < 2**31 else np.int64
        return Target([str(v) for v in distinct.to_pylist()], codes.astype(dtype, copy=False))
    chunks = [chunk if _is_text(chunk.type) else pc.cast(chunk, pa.string()) for chunk in chunks]
    column = pa.chunked_array(chunks, type=pa.string())
    cells = pc.unique(column)
    codes = _numbers(pc.index_in(column, value_set=cells).combine_chunks())
    dtype = np.int32 if len(cells) < 2**31 else np.int64
    return Target([str(cell) for cell in cells.to_pylist()], codes.astype(dtype, copy=False))


def _bad_target_cell(cell: str) -> bool:
    """A number that is not finite (inf): never a usable target. A missing cell (empty, NA,
    NaN, …) is not bad here: loading.py counts missing targets (--drop-missing-target)."""
    if cell in DEFAULT_NA_VALUES:
        return False
    try:
        return not math.isfinite(float(cell))
    except ValueError:
        return False


def _raise_decode_error(path: Path) -> None:
    """Find the first byte that is not UTF-8, counting from the start of the (unzipped) file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with _open_bytes(path) as raw:
        while chunk := raw.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: not UTF-8 text (byte {offset + error.start})") from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text (byte {offset + error.start})") from None
    raise DataError(f"{path}: not UTF-8 text")


def locate_csv_problem(path: Path, target: str | None, delimiter: str = ",") -> None:
    """Scan the CSV with the csv module and raise DataError at its first bad line, if any.

    The slow path behind the pyarrow reader: it streams the file (no list of rows) and stops
    at the first problem. Returns when it finds none (the caller then reports pyarrow's error).
    """
    header = _read_header(path, delimiter)
    target_name, feature_cols, target_col = _columns(path, header, target, delimiter)
    try:
        with _open_text(path) as handle:
            rows = csv.reader(handle, delimiter=delimiter)
            next(rows, None)
            for line, row in enumerate(rows, start=2):
                _check_row(path, line, row, header, feature_cols, target_col, target_name)
    except UnicodeDecodeError:
        _raise_decode_error(path)
    except (csv.Error, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable CSV ({one_line(error)})") from None


def _check_row(
    path: Path,
    line: int,
    row: list[str],
    header: list[str],
    feature_cols: list[int],
    target_col: int,
    target_name: str,
) -> None:
    if not row:
        return  # a blank line (pyarrow skips those too)
    if len(row) != len(header):
        raise DataError(f"{path}: line {line} has {len(row)} cells, the header has {len(header)}")
    cell = row[target_col].strip()
    if _bad_target_cell(cell):
        raise DataError(f"{path}: line {line}, column {target_name!r}: {cell!r} is not finite")


# --- Parquet ------------------------------------------------------------------------------------


def _read_parquet(path: Path, target: str | None, sink: BinaryIO) -> TableInfo:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (not Parquet)")
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    header = list(parquet.schema_arrow.names)
    if not header:
        raise DataError(f"{path}: empty file (no columns)")
    target_name, feature_cols, _ = _columns(path, header, target)
    names = [header[col] for col in feature_cols]
    for name in names:
        kind = parquet.schema_arrow.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            if not mixed.is_parquet_text(kind):
                raise DataError(f"{path}: column {name!r} has type {kind}, not numbers or text")
            if not _is_text(kind):
                raise _NotNumbers  # dictionary (categorical) or boolean: text columns

    def convert(numbered: tuple[int, pa.RecordBatch]) -> tuple[np.ndarray, list[pa.Array]]:
        first_row, batch = numbered
        return _parquet_block(path, batch, names, first_row), [
            _parquet_target(path, batch.column(target_name), target_name, first_row)
        ]

    try:
        batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        rows, chunks = _write_blocks(_ordered_map(convert, _numbered(batches)), sink)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    codes_target = _encode(chunks)
    _check_parquet_target(path, codes_target, target_name)
    return TableInfo(rows, names, target_name, codes_target)


def _check_parquet_target(path: Path, codes_target: Target, target_name: str) -> None:
    for index, cell in enumerate(codes_target.cells):
        if _bad_target_cell(cell):
            row = int(np.argmax(codes_target.codes == index))
            raise DataError(f"{path}: row {row}, column {target_name!r}: {cell!r} is not finite")


@dataclass(frozen=True)
class _MixedParquet:
    """A Parquet file opened for mixed_parquet.py: its feature names, target, text columns."""

    path: Path
    parquet: Any  # pq.ParquetFile (mixed_parquet.open_file)
    names: list[str]
    target_name: str
    text: set[int]

    def batches(self) -> Iterator[tuple[int, Any]]:
        """(first row, record batch) of the feature and target columns, in file order."""
        return _numbered(
            self.parquet.iter_batches(
                batch_size=mixed_parquet.BATCH_ROWS, columns=[*self.names, self.target_name]
            )
        )

    def where(self, first_row: int) -> Callable[[int], str]:
        """Where a batch's row is, for messages."""
        return lambda row: f"{self.path}: row {first_row + row}"

    def target(self, column: Any, first_row: int) -> pa.Array:
        """The target cells of an Arrow array of the target column (_parquet_target) whose
        first row is first_row."""
        return _parquet_target(self.path, column, self.target_name, first_row)

    def info(
        self, rows: int, chunks: list[Any], coders: dict[int, mixed_parquet.Coder]
    ) -> TableInfo:
        """The TableInfo of the file read (its target encoded and checked)."""
        codes_target = _encode(chunks)
        _check_parquet_target(self.path, codes_target, self.target_name)
        vocabularies = {col: coder.vocabulary for col, coder in coders.items()}
        return TableInfo(
            rows,
            self.names,
            self.target_name,
            codes_target,
            mixed.vocabulary_tuple(vocabularies, len(self.names)),
            mixed=True,
        )


def _open_mixed_parquet(path: Path, target: str | None) -> _MixedParquet:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        header = list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    target_name, feature_cols, _ = _columns(path, header, target)
    names = [header[col] for col in feature_cols]
    try:
        parquet = mixed_parquet.open_file(path, names)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    text = {
        col
        for col, name in enumerate(names)
        if mixed.is_parquet_text(parquet.schema_arrow.field(name).type)
    }
    return _MixedParquet(path, parquet, names, target_name, text)


def _read_parquet_mixed(
    path: Path, target: str | None, sink: BinaryIO, na_values: tuple[str, ...]
) -> TableInfo:
    """The Parquet file as numbers (null, NaN: missing) and codes of its text columns
    (mixed_parquet.py), written to sink as rows."""
    import pyarrow as pa

    table = _open_mixed_parquet(path, target)
    coders = {col: mixed_parquet.Coder() for col in table.text}
    dictionaries = mixed_parquet.Dictionaries(na_values)

    def convert(numbered: tuple[int, Any]) -> mixed_parquet.Batch:
        first_row, batch = numbered
        block, texts = mixed_parquet.convert(
            batch, table.names, table.text, dictionaries, table.where(first_row)
        )
        return mixed_parquet.Batch(
            block, texts, [table.target(batch.column(table.target_name), first_row)]
        )

    try:
        rows, chunks = mixed_parquet.write_batches(
            _ordered_map(convert, table.batches()), coders, sink
        )
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    return table.info(rows, chunks, coders)


def parquet_text_bytes(path: Path, target: str | None) -> tuple[int, bool] | None:
    """(float32 bytes: rows × features × 4, strings only) of a Parquet file one of whose feature
    columns is text (string, dictionary, boolean); None for another file, or one whose footer
    cannot be read (the reader then says why). Strings only: no dictionary or boolean column,
    so the file may still be numbers written as strings (numbers_as_strings)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        schema = metadata.schema.to_arrow_schema()
        _, feature_cols, _ = _columns(path, list(schema.names), target)
    except (pa.ArrowException, OSError, DataError):
        return None
    kinds = [schema.field(col).type for col in feature_cols]
    if not any(mixed.is_parquet_text(kind) for kind in kinds):
        return None
    strings_only = all(_is_text(kind) or not mixed.is_parquet_text(kind) for kind in kinds)
    return int(metadata.num_rows) * len(feature_cols) * 4, strings_only


def numbers_as_strings(x: ColumnRows, info: TableInfo) -> bool:
    """The table read by read_parquet_columns is one the numbers-only reader takes (_read_parquet):
    no cell missing and every text cell a number (its string columns hold numbers). Such a file
    is read as numbers, not codes, as it always was."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for vocabulary in info.vocabularies:
        if vocabulary is not None:
            try:
                pc.cast(pa.array(list(vocabulary), pa.string()), pa.float64())
            except pa.ArrowInvalid:
                return False
    return not any(np.isnan(column).any() for column in x.columns)


def read_parquet_columns(
    path: Path, target: str | None, na_values: tuple[str, ...] = DEFAULT_NA_VALUES
) -> tuple[ColumnRows, TableInfo]:
    """A Parquet file with text columns into memory, column by column (columns.ColumnRows).

    Each row group is read a few columns at a time (mixed_parquet.pieces), decoded by pyarrow's
    threads on a thread of its own one piece ahead, while this thread casts each numeric column
    into its place and gives the text columns their codes (row groups in file order, so each
    vocabulary lists its cells first seen first). A bad number is named by the first column, in
    file order, of the first row group that has one."""
    import pyarrow as pa

    table = _open_mixed_parquet(path, target)
    coders = {col: mixed_parquet.Coder() for col in table.text}
    dictionaries = mixed_parquet.Dictionaries(na_values)
    rows = table.parquet.metadata.num_rows
    x = ColumnRows.empty(rows, len(table.names))
    position = {name: col for col, name in enumerate(table.names)}
    pieces = mixed_parquet.pieces(table.parquet.metadata, [*table.names, table.target_name])

    def decode(piece: mixed_parquet.Piece) -> Any:
        return table.parquet.read_row_group(piece.group, columns=piece.names)

    chunks: list[Any] = []
    try:
        for piece, read in zip(pieces, _ordered_map(decode, pieces, threads=1), strict=True):
            stop = piece.first_row + piece.rows
            where = table.where(piece.first_row)
            for name in piece.names:
                column = read.column(name)
                col = position.get(name) if name != table.target_name else None
                if col is None:
                    first = piece.first_row
                    for chunk in column.chunks:
                        chunks.append(table.target(chunk, first))
                        first += len(chunk)
                elif col in table.text:
                    coded = mixed_parquet.dictionary_column(column, col, dictionaries)
                    x.columns[col, piece.first_row : stop] = coders[col].codes(coded)
                else:
                    out = x.columns[col, piece.first_row : stop]
                    mixed_parquet.put_column(column, out, name, where)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    finally:
        pa.default_memory_pool().release_unused()  # the pieces are gone: give their pages back
    return x, table.info(rows, chunks, coders)


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _numbered(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(number of the batch's first row, batch) for each record batch."""
    first_row = 0
    for batch in batches:
        yield first_row, batch
        first_row += batch.num_rows


def _parquet_block(
    path: Path, batch: pa.RecordBatch, names: list[str], first_row: int
) -> np.ndarray:
    """(B, F) float32 of one record batch; the first bad cell's row and column named."""
    block = np.empty((batch.num_rows, len(names)), dtype=np.float32)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: found just below
        for out_col, name in enumerate(names):
            column = batch.column(name)
            if column.null_count or _is_text(column.type):
                column = _parquet_numbers(path, column, name, first_row)
            else:
                column = _numbers(column)
            block[:, out_col] = column  # cast to float32 on assignment
    if not np.isfinite(block).all():  # name the first bad cell's row and column
        for name in names:
            _parquet_numbers(path, batch.column(name), name, first_row)
    return block


def _parquet_numbers(path: Path, column: pa.Array, name: str, first_row: int) -> np.ndarray:
    """One batch of a feature column as float32; the first bad row named in the error."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise _NotNumbers  # a missing cell
    if _is_text(column.type):
        try:
            column = pc.cast(pc.utf8_trim_whitespace(column), pa.float64())
        except pa.ArrowInvalid:
            raise _NotNumbers from None  # a text column
    values = _numbers(column)
    if np.isnan(values).any():
        raise _NotNumbers  # NaN: a missing cell
    with np.errstate(over="ignore"):
        as_float32 = values.astype(np.float32)
    bad = ~np.isfinite(as_float32)
    if bad.any():
        offset = int(np.argmax(bad))
        beyond = " (beyond float32)" if np.isfinite(values[offset]) else ""
        raise DataError(
            f"{path}: row {first_row + offset}, column {name!r}: "
            f"{values[offset]} is not finite{beyond}"
        )
    return as_float32


def _parquet_target(path: Path, column: pa.Array, name: str, first_row: int) -> pa.Array:
    """Target cells as trimmed strings: numbers written as NPZ targets are (1, 0.5, ...).
    Integers without nulls stay numbers (int64), written out as strings by _encode."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        column = pc.fill_null(column.cast(pa.string()), "")  # missing: counted by loading.py
    if _is_text(column.type):
        return pc.utf8_trim_whitespace(column.cast(pa.string()))
    if pa.types.is_integer(column.type) and column.type != pa.uint64():
        return pc.cast(column, pa.int64())
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return pc.cast(column, pa.string())
    if pa.types.is_boolean(column.type) or pa.types.is_dictionary(column.type):
        return pc.cast(column, pa.string())
    raise DataError(f"{path}: target column {name!r} has type {column.type}")
