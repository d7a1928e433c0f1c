"""The mixed Parquet reader (mixed_parquet.py) in batches of a few rows: row groups whose
dictionaries differ, entries no row uses, booleans and plain strings with nulls give the values
and vocabularies of the same cells read from a CSV (mixed_csv.py, another code path), and a bad
number deep in the file is named by its row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from bnserve.training.config import TrainConfig
from bnserve.training.data import mixed_parquet, readers
from bnserve.training.errors import DataError
from bnserve.training.train import prepare

ROWS = 40


def read(path) -> tuple[np.ndarray, readers.TableInfo]:
    sink = io.BytesIO()
    info = readers.read_table(Path(path), "label", sink)
    return np.frombuffer(sink.getvalue(), dtype=np.float32).reshape(info.rows, -1), info


def colour_cell(i: int) -> str | None:
    """First seen in this order: 'red', ' blue', None, 'NA', 'green', … ('violet' from row 30)."""
    if i >= 30 and i % 3 == 0:
        return "violet"
    return ("red", " blue", None, "NA", "green", "red ")[i % 6]


def write_both(tmp_path) -> tuple[str, str]:
    """The same table as Parquet in four row groups, each with its own dictionary (another
    order, entries no row uses), and as CSV (null: an empty cell)."""
    colours = [colour_cell(i) for i in range(ROWS)]
    size = [None if i % 7 == 0 else float(i % 9) - 0.5 for i in range(ROWS)]
    member = [None if i % 11 == 0 else i % 4 != 0 for i in range(ROWS)]
    name = [None if i % 13 == 0 else ("ann", " bob")[i % 2] for i in range(ROWS)]
    label = [i % 2 for i in range(ROWS)]
    path = tmp_path / "groups.parquet"
    schema = pa.schema(
        [
            ("size", pa.float64()),
            ("colour", pa.dictionary(pa.int32(), pa.string())),
            ("member", pa.bool_()),
            ("name", pa.string()),
            ("label", pa.int64()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for group, start in enumerate(range(0, ROWS, 10)):
            part = range(start, start + 10)
            used = sorted({c for c in (colours[i] for i in part) if c is not None})
            entries = [f"unused{group}", *(used[::-1] if group % 2 else used)]
            indices = pa.array(
                [None if colours[i] is None else entries.index(colours[i]) for i in part],
                pa.int32(),
            )
            columns = [
                pa.array([size[i] for i in part], pa.float64()),
                pa.DictionaryArray.from_arrays(indices, pa.array(entries)),
                pa.array([member[i] for i in part], pa.bool_()),
                pa.array([name[i] for i in part], pa.string()),
                pa.array([label[i] for i in part], pa.int64()),
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    assert pq.ParquetFile(path).num_row_groups == 4
    csv = tmp_path / "groups.csv"
    text = pa.table(
        {
            "size": pa.array(size, pa.float64()),
            "colour": pa.array(colours, pa.string()),
            "member": pa.array(member, pa.bool_()),
            "name": pa.array(name, pa.string()),
            "label": pa.array(label, pa.int64()),
        }
    )
    pa_csv.write_csv(text, csv, pa_csv.WriteOptions(quoting_style="none"))
    return str(path), str(csv)


@pytest.mark.parametrize("batch_rows", [3, 10, 65_536])
def test_row_groups_with_their_own_dictionaries_read_as_the_csv_of_the_same_cells(
    tmp_path, monkeypatch, batch_rows
):
    monkeypatch.setattr(mixed_parquet, "BATCH_ROWS", batch_rows)
    parquet, csv = write_both(tmp_path)
    x, info = read(parquet)
    x_csv, info_csv = read(csv)
    np.testing.assert_array_equal(x, x_csv)  # NaN in the same places too
    assert info.vocabularies == info_csv.vocabularies
    colours = info.vocabularies[1]
    assert colours is not None
    assert list(colours) == ["red", "blue", "green", "violet"]  # first seen first, trimmed
    assert not any(cell.startswith("unused") for cell in colours)  # entries no row uses
    assert list(info.vocabularies[2] or ()) == ["true", "false"]
    assert list(info.vocabularies[3] or ()) == ["bob", "ann"]


def test_a_level_only_outside_the_training_rows_is_not_in_the_schema(tmp_path):
    parquet, _ = write_both(tmp_path)
    prepared = prepare(
        TrainConfig(data=parquet, min_level_count=1, dev_fraction=0.2, test_fraction=0.2),
        cache_dir="off",
    )
    x = np.asarray(prepared.dataset.x)
    vocabulary = prepared.dataset.vocabularies[1]
    assert vocabulary is not None
    violet = float(vocabulary.index("violet"))
    train = prepared.split.train
    outside = np.setdiff1d(np.arange(ROWS), train)
    assert prepared.schema is not None
    levels = {value for value, _ in prepared.schema.columns[1].levels}
    # whatever the seed's split, a level is in the schema exactly when a training row has it
    assert ("violet" in levels) == bool(np.any(x[train, 1] == violet))
    np.testing.assert_array_equal(
        sorted(levels), sorted({vocabulary[int(c)] for c in x[train, 1] if not np.isnan(c)})
    )
    assert outside.size


def test_a_value_beyond_float32_in_a_later_batch_is_named_by_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(mixed_parquet, "BATCH_ROWS", 4)
    size = [None if i == 1 else float(i) for i in range(12)]
    size[9] = 1e39
    colour = pa.array([("a", "b")[i % 2] for i in range(12)]).dictionary_encode()
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"size": size, "colour": colour, "label": [0, 1] * 6}), path)
    with pytest.raises(DataError, match=r"big.parquet: row 9, column 'size': '1e\+39' is not "):
        read(path)
