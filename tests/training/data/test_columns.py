"""A Parquet file with text columns read into memory column by column (columns.ColumnRows):
the same values, vocabularies and target as the row-by-row reader of the cache, no cache entry
unless it would not fit in memory, the same schema and moments to the bit, and rows read back
as a row-major array gives them."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnserve.training.config import TrainConfig
from bnserve.training.data import cache, columns, mixed_parquet, readers
from bnserve.training.data.cache import RowFile, load_table
from bnserve.training.data.columns import ColumnRows
from bnserve.training.data.loading import split_rows
from bnserve.training.data.schema import SchemaSettings, fit_schema
from bnserve.training.errors import DataError
from bnserve.training.train import prepare
from tests.training.data.test_mixed_parquet import expected_from, many_groups, write_both


def by_rows(path: Path, target: str) -> tuple[np.ndarray, readers.TableInfo]:
    """The cache's reader: rows written to a sink."""
    sink = io.BytesIO()
    info = readers.read_table(path, target, sink)
    return np.frombuffer(sink.getvalue(), dtype=np.float32).reshape(info.rows, -1), info


def test_columns_hold_what_the_row_reader_writes(tmp_path):
    parquet, _ = write_both(tmp_path)
    x, info = readers.read_parquet_columns(Path(parquet), "label")
    rows, row_info = by_rows(Path(parquet), "label")
    np.testing.assert_array_equal(np.asarray(x), rows)  # NaN in the same places too
    assert info == dataclasses.replace(row_info, target=info.target)
    assert info.target.cells == row_info.target.cells
    np.testing.assert_array_equal(info.target.codes, row_info.target.codes)


@pytest.mark.parametrize("piece_bytes", [1, 200, 16 << 20])
def test_many_row_groups_read_a_few_columns_at_a_time(tmp_path, monkeypatch, piece_bytes):
    """36 row groups of 17 rows, each with its own dictionaries, read one column at a time, a
    few, or whole: the values and vocabularies are those worked out row by row."""
    path = tmp_path / "groups.parquet"
    written = many_groups(path)
    monkeypatch.setattr(mixed_parquet, "PIECE_BYTES", piece_bytes)
    x, info = readers.read_parquet_columns(path, "label")
    expected, vocabularies = expected_from(written)
    np.testing.assert_array_equal(np.asarray(x), expected)
    assert [info.vocabularies[2], info.vocabularies[3]] == vocabularies
    assert info.target.codes.tolist() == [info.target.cells.index(str(v)) for v in written["label"]]


def test_pieces_bound_what_is_decoded_at_once(monkeypatch):
    monkeypatch.setattr(mixed_parquet, "PIECE_BYTES", 8 * 100 * 3)  # 3 columns of 100 rows

    class Groups:
        num_row_groups = 2

        def row_group(self, group):
            return type("Group", (), {"num_rows": (100, 1000)[group]})

    found = mixed_parquet.pieces(Groups(), list("abcdefg"))
    assert [(p.group, p.first_row, p.rows, "".join(p.names)) for p in found] == [
        (0, 0, 100, "abc"),
        (0, 0, 100, "def"),
        (0, 0, 100, "g"),
        *[(1, 100, 1000, name) for name in "abcdefg"],  # a column alone when it is larger
    ]


def test_a_value_beyond_float32_is_named_by_its_row_and_column(tmp_path, monkeypatch):
    """The first row group with a bad value, its first such column in file order."""
    size = [None if i == 1 else float(i) for i in range(12)]
    size[9] = 1e39  # row group 2 (rows 8-11)
    later = [float("inf") if i == 6 else 0.5 for i in range(12)]  # row group 1, a later column
    colour = pa.array([("a", "b")[i % 2] for i in range(12)]).dictionary_encode()
    path = tmp_path / "big.parquet"
    table = {"size": size, "later": later, "colour": colour, "label": [0, 1] * 6}
    pq.write_table(pa.table(table), path, row_group_size=4)
    with pytest.raises(DataError, match=r"big.parquet: row 6, column 'later': 'inf' is not fin"):
        readers.read_parquet_columns(path, "label")
    later[6] = 0.5
    pq.write_table(pa.table(table | {"later": later}), path, row_group_size=4)
    with pytest.raises(DataError, match=r"big.parquet: row 9, column 'size': '1e\+39' is not "):
        readers.read_parquet_columns(path, "label")


def test_a_text_parquet_that_fits_is_read_into_memory_and_never_cached(tmp_path):
    parquet, _ = write_both(tmp_path)
    x, _ = load_table(Path(parquet), "label", tmp_path / "cache")
    assert isinstance(x, ColumnRows)
    assert not (tmp_path / "cache").exists()
    rows, _ = by_rows(Path(parquet), "label")
    np.testing.assert_array_equal(np.asarray(x), rows)
    off, _ = load_table(Path(parquet), "label", None)  # --cache-dir off: the same
    assert isinstance(off, ColumnRows)


def test_a_text_parquet_too_large_for_memory_goes_through_the_cache(tmp_path, monkeypatch):
    parquet, _ = write_both(tmp_path)
    asked: list[int] = []

    def fits(nbytes: int) -> bool:
        asked.append(nbytes)
        return False

    monkeypatch.setattr(cache, "fits_in_memory", fits)
    x, info = load_table(Path(parquet), "label", tmp_path / "cache")
    assert asked == [info.rows * len(info.feature_names) * 4]
    assert isinstance(x, RowFile)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    monkeypatch.undo()
    in_memory, again = load_table(Path(parquet), "label", tmp_path / "other")
    np.testing.assert_array_equal(np.asarray(x), np.asarray(in_memory))
    assert info.vocabularies == again.vocabularies


def test_a_numbers_only_parquet_still_uses_the_cache(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"a": [0.5, 1.5, None, 2.5], "y": [0, 1, 0, 1]}), path)
    assert readers.parquet_text_bytes(path, "y") is None  # nulls only: no text column
    x, info = load_table(path, "y", tmp_path / "cache")
    assert isinstance(x, RowFile) and info.mixed


def test_column_rows_index_as_a_row_major_array():
    values = np.arange(35, dtype=np.float32).reshape(7, 5) * 0.5
    x = ColumnRows(np.ascontiguousarray(values.T))
    assert x.shape == (7, 5) and len(x) == 7 and x.dtype == np.float32
    for index in ([4, 0, 0, 6], np.array([2, 3]), slice(1, 6, 2), slice(None), [-1, -7], []):
        got = x[index]
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, values[index])
    np.testing.assert_array_equal(x[3], values[3])
    np.testing.assert_array_equal(x[np.int64(-2)], values[-2])
    np.testing.assert_array_equal(x[[5, 1], 2], values[[5, 1], 2])
    np.testing.assert_array_equal(x[np.arange(7), 1:3], values[:, 1:3])
    np.testing.assert_array_equal(np.asarray(x), values)
    with pytest.raises(IndexError):
        x[[7]]
    with pytest.raises(ValueError):
        ColumnRows(values.T)  # not C-order


@pytest.mark.parametrize("text_columns", [2, 0])
def test_the_schema_of_columns_is_the_schema_of_rows_to_the_bit(monkeypatch, text_columns):
    """Several chunks of training rows (numbers with gaps, far from 0; codes): the schema and
    every moment the pass finds equal those found on the same rows stored row by row."""
    import bnserve.training.data.schema as schema_module

    monkeypatch.setattr(schema_module, "CHUNK_BYTES", 4096)  # 64 rows a chunk
    rng = np.random.default_rng(3)
    n, numbers = 1000, 4
    values = (rng.normal(size=(n, numbers + text_columns)) * 3 + 1e4).astype(np.float32)
    values[:, numbers:] = rng.integers(0, 5, (n, text_columns))
    values[rng.random(values.shape) < 0.1] = np.nan
    names = [f"c{col}" for col in range(values.shape[1])]
    vocabularies = [None] * numbers + [tuple("abcde")] * text_columns
    train = split_rows(n, dev_fraction=0.2, test_fraction=0.1, seed=0).train
    found = [
        fit_schema(x, train, names, vocabularies, True, SchemaSettings(), str)
        for x in (values, ColumnRows(np.ascontiguousarray(values.T)))
    ]
    assert found[0][0] == found[1][0]
    moments = [dataclasses.asdict(f[1]) for f in found]
    for key, value in moments[0].items():
        np.testing.assert_array_equal(value, moments[1][key], err_msg=key, strict=True)


def test_fits_in_memory_against_what_is_available(monkeypatch):
    monkeypatch.setattr(columns, "available_memory", lambda: 1000)
    assert columns.fits_in_memory(500) and not columns.fits_in_memory(501)
    monkeypatch.setattr(columns, "available_memory", lambda: None)
    assert not columns.fits_in_memory(1)
    monkeypatch.undo()
    available = columns.available_memory()
    assert available is not None and available > 0  # Linux: /proc/meminfo at least


def test_prepare_reads_a_text_parquet_in_memory_and_trains_on_it(tmp_path):
    parquet, _ = write_both(tmp_path)
    prepared = prepare(TrainConfig(data=parquet, min_level_count=1), cache_dir=str(tmp_path / "c"))
    assert isinstance(prepared.dataset.x, ColumnRows)
    batch = prepared.x_train.take(np.arange(len(prepared.x_train)))
    assert batch.shape == prepared.x_train.shape and np.isfinite(batch).all()


def test_numbers_written_as_strings_are_read_as_numbers_as_before(tmp_path):
    """A string column whose cells are all numbers, no cell missing: the numbers-only reader's
    table (numbers, not codes); one missing cell makes it a table with text, held in memory."""
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"a": ["1.5", " 2", "3e1"], "y": [0, 1, 0]}), path)
    x, info = load_table(path, "y", tmp_path / "cache")
    assert isinstance(x, RowFile) and not info.mixed
    np.testing.assert_array_equal(np.asarray(x)[:, 0], [1.5, 2.0, 30.0])
    pq.write_table(pa.table({"a": ["1.5", None, "3e1"], "y": [0, 1, 0]}), path)
    x, info = load_table(path, "y", tmp_path / "cache")
    assert isinstance(x, ColumnRows) and info.mixed
    assert info.vocabularies[0] == ("1.5", "3e1")
