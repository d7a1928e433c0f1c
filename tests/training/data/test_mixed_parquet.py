"""The mixed Parquet reader (mixed_parquet.py) in batches of a few rows: row groups whose
dictionaries differ, entries no row uses, booleans and plain strings with nulls give the values
and vocabularies of the same cells read from a CSV (mixed_csv.py, another code path), and a bad
number deep in the file is named by its row."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


def many_groups(path, rows: int = 600, group_rows: int = 17) -> dict[str, list]:
    """A table of many row groups (each text column's dictionary its own per group), with
    nulls, NaN, missing tokens and padded cells; its columns as written."""
    rng = np.random.default_rng(5)
    levels = ["a", " b", "c ", "NA", "", "d", "e"] + [f"late{k}" for k in range(5)]
    gaps = rng.random((rows, 4))
    sizes, counts, spread = rng.normal(size=rows), rng.integers(-9, 9, rows), rng.random(rows)
    # later rows reach later levels: a vocabulary grows batch after batch
    level = np.minimum(len(levels) - 1, np.arange(rows) * len(levels) * 0.8 / rows + spread * 4)
    columns: dict[str, list] = {
        "size": [None if gaps[i, 0] < 0.1 else float(sizes[i]) for i in range(rows)],
        "count": [None if gaps[i, 1] < 0.05 else int(counts[i]) for i in range(rows)],
        "kind": [None if gaps[i, 2] < 0.05 else levels[int(level[i])] for i in range(rows)],
        "flag": [None if gaps[i, 3] < 0.05 else bool(spread[i] > 0.5) for i in range(rows)],
        "label": [int(v) for v in rng.integers(0, 2, rows)],
    }
    columns["size"][7] = float("nan")
    pq.write_table(pa.table(columns), path, row_group_size=group_rows)
    return columns


def expected_from(columns: dict[str, list]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """The float32 array and text vocabularies the reader must give, worked out row by row."""
    missing = {"", "NA", "NaN", "nan", "null", "NULL", "None"}
    vocabularies: list[tuple[str, ...]] = []
    out = []
    for name in ("size", "count"):
        out.append([np.nan if v is None else v for v in columns[name]])
    for name in ("kind", "flag"):
        cells = [
            None if v is None else str(v).lower() if isinstance(v, bool) else v.strip()
            for v in columns[name]
        ]
        order = list(dict.fromkeys(c for c in cells if c is not None and c not in missing))
        vocabularies.append(tuple(order))
        out.append([np.nan if c is None or c in missing else order.index(c) for c in cells])
    return np.array(out, dtype=np.float32).T, vocabularies


def test_batches_converted_out_of_turn_are_written_in_file_order(tmp_path, monkeypatch):
    """Many row groups in batches of 5 rows on two threads, the first batch held back until the
    second is converted: the rows and the vocabularies' first-seen order are the file's."""
    path = tmp_path / "groups.parquet"
    columns = many_groups(path)
    assert pq.ParquetFile(path).num_row_groups == 36
    monkeypatch.setattr(mixed_parquet, "BATCH_ROWS", 5)
    monkeypatch.setattr(readers, "available_cores", lambda: 2)
    second_done = threading.Event()
    real_convert = mixed_parquet.convert
    held: list[bool] = []

    def convert(batch, names, text, dictionaries, where):
        if where(0).endswith(": row 0"):  # the first batch waits for the second
            held.append(second_done.wait(timeout=30))
        done = real_convert(batch, names, text, dictionaries, where)
        if where(0).endswith(": row 5"):
            second_done.set()
        return done

    monkeypatch.setattr(mixed_parquet, "convert", convert)
    x, info = read(path)
    assert held == [True]  # the second batch was converted first
    expected, vocabularies = expected_from(columns)
    np.testing.assert_array_equal(x, expected)  # NaN in the same places too
    assert [info.vocabularies[2], info.vocabularies[3]] == vocabularies
    assert info.target.codes.tolist() == [info.target.cells.index(str(v)) for v in columns["label"]]


def test_numbers_from_arrow_buffers_match_to_numpy(tmp_path):
    """Slices (an offset into the validity bits), integers, float32 and float16, with nulls."""
    arrays = [
        pa.array([1.5, None, 3.0, None, 5.25, 6.0, None, 8.0, 9.0, 10.0, 11.0]).slice(3),
        pa.array([1, None, -3, 2**60, None, 7, 8, 9, 10], pa.int64()).slice(1, 6),
        pa.array([0.5, None, 2.5, 1e30], pa.float32()),
        pa.array(np.array([0.5, 1.0, 2.0], np.float16), mask=np.array([False, True, False])),
        pa.array([None, None], pa.float64()),
    ]
    for array in arrays:
        batch = pa.RecordBatch.from_arrays([array], names=["v"])
        block = np.zeros((len(array), 1), dtype=np.float32)
        mixed_parquet.numbers(batch, block, [0], ["v"], lambda row: f"row {row}")
        as_float64 = pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(block[:, 0], as_float64.astype(np.float32))


@pytest.mark.parametrize("damage", ["truncated", "page bytes", "footer bytes"])
def test_a_damaged_parquet_file_is_one_line_naming_it(tmp_path, damage):
    path = tmp_path / "damaged.parquet"
    many_groups(path, rows=3000, group_rows=1000)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "page bytes":  # the header of the second row group's first page
        start = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
        data[start : start + 40] = b"\xff" * 40
    else:
        data[-60:-8] = b"\xff" * 52
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as caught:
        prepare(TrainConfig(data=str(path), target="label"), cache_dir=str(tmp_path / "cache"))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "Parquet" in message
    assert "\n" not in message
    assert list((tmp_path / "cache").glob("*")) == []  # no entry, no temporary


@pytest.mark.parametrize(
    ("kind", "labels"),
    [
        (pa.int8(), [-5, 3, -5, 100, 3, 0]),
        (pa.uint64(), [2**63 + 1, 5, 5, 2**63 + 1, 7, 0]),
        (pa.int64(), [None, 4, 2**62, 4, None, -1]),  # nulls: a group's cells are strings
    ],
)
def test_integer_targets_give_the_cells_and_codes_of_their_text(tmp_path, kind, labels):
    path = tmp_path / "t.parquet"
    schema = pa.schema([("x", pa.float64()), ("y", kind)])
    with pq.ParquetWriter(path, schema) as writer:
        for part in (labels[:3], labels[3:]):  # two row groups
            table = pa.table({"x": [0.5] * 3, "y": pa.array(part, kind)}, schema=schema)
            writer.write_table(table)
    info = readers.read_table(path, "y", io.BytesIO())
    cells = ["" if v is None else str(v) for v in labels]
    assert info.target.cells == list(dict.fromkeys(cells))
    assert info.target.codes.tolist() == [info.target.cells.index(c) for c in cells]
