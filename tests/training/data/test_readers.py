"""CSV, gzip CSV and Parquet through the pyarrow readers: values, names, and every bad input
named by file, place and column in both formats."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnserve.training.config import TrainConfig
from bnserve.training.data.loading import load_dataset
from bnserve.training.errors import DataError
from bnserve.training.train import prepare


def write_parquet(path, columns: dict[str, list], names: list[str] | None = None) -> str:
    table = pa.Table.from_arrays([pa.array(v) for v in columns.values()], names or list(columns))
    pq.write_table(table, path)
    return str(path)


ROWS = [[0.5, 1.25, 0], [2.0, -3.5, 1], [4.125, 6.0, 1], [1e-3, 2e3, 0]]
CSV_TEXT = "a,b,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in ROWS)


@pytest.mark.parametrize("cache", ["on", "off"])
@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet"])
def test_every_format_loads_the_same_float32_table(tmp_path, kind, cache, monkeypatch):
    if cache == "off":
        monkeypatch.setenv("BNSERVE_CACHE_DIR", "off")
    path = tmp_path / f"data.{kind}"
    if kind == "csv":
        path.write_text(CSV_TEXT)
    elif kind == "csv.gz":
        path.write_bytes(gzip.compress(CSV_TEXT.encode()))
    else:
        write_parquet(
            path, {"a": [r[0] for r in ROWS], "b": [r[1] for r in ROWS], "y": [0, 1, 1, 0]}
        )
    dataset = load_dataset(str(path))
    assert dataset.x.dtype == np.float32
    np.testing.assert_array_equal(dataset.x, np.array(ROWS, dtype=np.float32)[:, :2])
    assert dataset.feature_names == ["a", "b"]
    assert dataset.class_names == ["0", "1"]
    np.testing.assert_array_equal(dataset.y, [0, 1, 1, 0])


def test_text_targets_become_class_names_in_parquet_and_csv(tmp_path):
    parquet = write_parquet(
        tmp_path / "iris.parquet", {"a": [1, 2, 3], "species": [" setosa", "virginica", "setosa"]}
    )
    csv = tmp_path / "iris.csv"
    csv.write_text("a,species\n1, setosa\n2,virginica\n3,setosa\n")
    for path in (parquet, str(csv)):
        dataset = load_dataset(path)
        assert dataset.class_names == ["setosa", "virginica"]
        np.testing.assert_array_equal(dataset.y, [0, 1, 0])


def test_parquet_regression_and_string_feature_columns(tmp_path):
    path = write_parquet(tmp_path / "r.parquet", {"a": ["1.5", " 2", "3e1"], "t": [0.5, 1.25, 7.0]})
    dataset = load_dataset(path)
    assert dataset.task == "regression"
    np.testing.assert_array_equal(dataset.x[:, 0], [1.5, 2.0, 30.0])
    np.testing.assert_array_equal(dataset.y[:, 0], [0.5, 1.25, 7.0])


def test_csv_with_many_blocks_keeps_row_order(tmp_path, monkeypatch):
    from bnserve.training.data import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 1 << 10)
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 7)
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((500, 3)), 3).astype(np.float32)
    y = rng.integers(0, 3, 500)
    csv = tmp_path / "many.csv"
    lines = "".join(f"{r[0]},{r[1]},{r[2]},{t}\n" for r, t in zip(x, y, strict=True))
    csv.write_text("a,b,c,y\n" + lines)
    parquet = write_parquet(
        tmp_path / "many.parquet", {**{k: x[:, i] for i, k in enumerate("abc")}, "y": y}
    )
    for path in (str(csv), parquet):
        dataset = load_dataset(path)
        np.testing.assert_array_equal(dataset.x, x)
        np.testing.assert_array_equal(dataset.y, y)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_csv_pieces_cut_only_at_line_breaks(tmp_path, monkeypatch, ending):
    from bnserve.training.data import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 16)  # most lines are longer than a piece
    rows = [[1.5, 123456.789012, 0], [-2.0, 0.25, 1], [3.0, 4.0, 1]] * 20
    lines = [f"{a},{b},{y}" for a, b, y in rows]
    lines.insert(7, "")  # a blank line is skipped, as pyarrow does
    path = tmp_path / "cut.csv"
    header = "first_feature,second_feature,y"  # longer than a piece too
    path.write_bytes((header + ending + ending.join(lines)).encode())  # no final line break
    dataset = load_dataset(str(path), cache_dir="off")
    expected = np.array([row[:2] for row in rows], dtype=np.float32)
    np.testing.assert_array_equal(dataset.x, expected)
    np.testing.assert_array_equal(dataset.y, [row[2] for row in rows])


def test_a_failing_piece_stops_the_read_and_names_its_line(tmp_path, monkeypatch):
    from bnserve.training.data import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 64)
    parsed: list[int] = []
    real = readers._feature_block

    def counting(table, names):
        parsed.append(table.num_rows)
        return real(table, names)

    monkeypatch.setattr(readers, "_feature_block", counting)
    lines = [f"{i},{i % 2}\n" for i in range(5000)]
    lines[40] = "4o,1\n"
    path = tmp_path / "early.csv"
    path.write_text("a,y\n" + "".join(lines))
    with pytest.raises(DataError, match=r"early.csv: line 42, column 'a': '4o' is not a number"):
        prepare(TrainConfig(data=str(path)), cache_dir="off")
    assert sum(parsed) < 1000  # the pieces after the bad one were not all parsed


# (CSV text, Parquet columns, the message both must give, CSV place, Parquet place)
BAD_INPUTS = {
    "inf": (
        "a,b,y\n1,2,0\n3,4,1\n-inf,4,1\n",
        {"a": [1.0, 3.0, float("-inf")], "b": [2.0, 4.0, 4.0], "y": [0, 1, 1]},
        r"column 'a': '?-inf'? is not finite",
        "line 4",
        "row 2",
    ),
    "inf target": (
        "a,b,y\n1,2,0\n3,4,inf\n",
        {"a": [1.0, 3.0], "b": [2.0, 4.0], "y": [0.0, float("inf")]},
        r"column 'y': 'inf' is not finite",
        "line 3",
        "row 1",
    ),
    "missing target": (
        "a,b,y\n1,2,0\n3,4,\n",
        {"a": [1.0, 3.0], "b": [2.0, 4.0], "y": ["0", None]},
        r"column 'y': 1 row\(s\) have no target value; leave them out with --drop-missing-target",
        "line 3",
        "row 1",
    ),
    "float32 overflow": (
        "a,y\n1,0\n1e39,1\n",
        {"a": [1.0, 1e39], "y": [0, 1]},
        r"column 'a': '?1e\+?39'? is (beyond float32|not finite \(beyond float32\))",
        "line 3",
        "row 1",
    ),
    "single class": (
        "a,b,y\n1,2,7\n3,4,7\n",
        {"a": [1.0, 3.0], "b": [2.0, 4.0], "y": [7, 7]},
        r"target 'y' has a single class '7'",
        "",
        "",
    ),
    "duplicate columns": (
        "a,b,a,y\n1,2,3,0\n3,4,5,1\n",
        {"a": [1.0], "b": [2.0], "a2": [3.0], "y": [0]},
        r"duplicate column name 'a' \(columns 1 and 3\)",
        "",
        "",
    ),
    "no feature columns": ("y\n1\n2\n", {"y": [1, 2]}, r"no feature columns besides", "", ""),
    "no data rows": (
        "a,y\n",
        {"a": pa.array([], pa.float64()), "y": pa.array([], pa.int64())},
        r"no data rows",
        "",
        "",
    ),
}


def write_bad(tmp_path, kind: str, case: str) -> str:
    text, columns, *_ = BAD_INPUTS[case]
    if kind == "csv":
        path = tmp_path / "bad.csv"
        path.write_text(text)
        return str(path)
    names = ["a", "b", "a", "y"] if case == "duplicate columns" else None
    return write_parquet(tmp_path / "bad.parquet", columns, names)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_file_place_and_column(tmp_path, kind, case):
    path = write_bad(tmp_path, kind, case)
    _, _, message, csv_place, parquet_place = BAD_INPUTS[case]
    place = csv_place if kind == "csv" else parquet_place
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(path)
    assert str(caught.value).startswith(f"{path}: {place}")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_missing_target_column_lists_the_header(tmp_path, kind):
    if kind == "csv":
        path = tmp_path / "d.csv"
        path.write_text("a,b\n1,2\n")
        path = str(path)
    else:
        path = write_parquet(tmp_path / "d.parquet", {"a": [1], "b": [2]})
    named = r"target column 'label' is not in the header; the columns are \['a', 'b'\]"
    with pytest.raises(DataError, match=named):
        load_dataset(path, target="label")


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet"])
def test_an_empty_file_is_named(tmp_path, kind):
    path = tmp_path / f"empty.{kind}"
    path.write_bytes(gzip.compress(b"") if kind == "csv.gz" else b"")
    with pytest.raises(DataError, match=rf"{path}: empty file"):
        load_dataset(str(path))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_fewer_than_two_training_rows_names_the_file(tmp_path, kind):
    if kind == "csv":
        path = tmp_path / "tiny.csv"
        path.write_text("a,y\n1,0\n2,1\n3,0\n")
        path = str(path)
    else:
        path = write_parquet(tmp_path / "tiny.parquet", {"a": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    with pytest.raises(DataError, match=rf"{path}: 3 rows leave 1 training row\(s\)"):
        prepare(TrainConfig(data=path))


def test_a_bad_line_deep_in_a_gzip_csv_is_found_by_the_rescan(tmp_path, monkeypatch):
    from bnserve.training.data import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 1 << 12)
    lines = [f"{i},{i % 2}\n" for i in range(3000)]
    lines[2500] = "12,x1\n"  # a text target among numbers is fine: it is just another class
    lines[2700] = "1_0,1\n"  # Python's float() reads this; pyarrow and bnserve do not
    path = tmp_path / "deep.csv.gz"
    path.write_bytes(gzip.compress(("a,y\n" + "".join(lines)).encode()))
    with pytest.raises(
        DataError, match=r"deep.csv.gz: line 2702, column 'a': '1_0' is not a number"
    ):
        prepare(TrainConfig(data=str(path)))


def test_a_parquet_column_of_another_type_is_named(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"when": [b"x", b"y"], "y": [0, 1]})
    with pytest.raises(DataError, match=r"column 'when' has type binary, not numbers"):
        load_dataset(path)


def test_a_broken_parquet_file_is_a_data_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataError, match=r"broken.parquet: not a readable Parquet file"):
        load_dataset(str(path))


def test_a_gzip_csv_cut_short_or_not_gzip_at_all_is_named(tmp_path):
    whole = gzip.compress(("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(100_000))).encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.csv.gz: not a readable CSV"):
        load_dataset(str(cut))
    fake = tmp_path / "fake.csv.gz"
    fake.write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match=r"fake.csv.gz: not a readable CSV \(Not a gzipped file"):
        load_dataset(str(fake))
