"""Loading digits, CSV and NPZ; task inference; the split; bad input named by row and column."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnserve.training.data.loading import fit_standardization, load_dataset, split_rows
from bnserve.training.errors import DataError


def write_csv(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_digits_is_the_real_data_set():
    dataset = load_dataset("digits")
    assert dataset.x.shape == (1797, 64)
    assert dataset.task == "classification"
    assert dataset.class_names == [str(digit) for digit in range(10)]
    assert np.bincount(dataset.y).min() > 170  # about 180 of each digit
    assert dataset.x.min() == 0 and dataset.x.max() == 16
    assert dataset.feature_names[:2] == ["pixel_0_0", "pixel_0_1"]


def test_csv_keeps_feature_names_and_class_names(tmp_path):
    path = write_csv(tmp_path, "a,species,b\n1,setosa,2\n3,virginica,4\n5,setosa,6\n")
    dataset = load_dataset(path, target="species")
    assert dataset.feature_names == ["a", "b"]
    assert dataset.class_names == ["setosa", "virginica"]
    np.testing.assert_array_equal(dataset.y, [0, 1, 0])
    np.testing.assert_array_equal(dataset.x, [[1, 2], [3, 4], [5, 6]])


def test_numeric_class_labels_sort_by_value(tmp_path):
    path = write_csv(
        tmp_path, "x,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate([10, 2, 2]))
    )
    dataset = load_dataset(path)
    assert dataset.class_names == ["2", "10"]
    np.testing.assert_array_equal(dataset.y, [1, 0, 0])


def test_task_is_inferred_from_the_target(tmp_path):
    real = write_csv(tmp_path, "x,y\n1,0.5\n2,1.25\n3,2.0\n", "real.csv")
    assert load_dataset(real).task == "regression"
    assert load_dataset(real).target_names == ["y"]
    few_integers = write_csv(tmp_path, "x,y\n1,0\n2,1\n3,1\n", "few.csv")
    assert load_dataset(few_integers).task == "classification"
    assert load_dataset(few_integers, task="regression").task == "regression"


def test_regression_on_a_text_target_names_the_value(tmp_path):
    path = write_csv(tmp_path, "a,species\n1,setosa\n2,virginica\n")
    with pytest.raises(
        DataError, match=r"regression target 'species' has non-numeric value 'setosa'"
    ):
        load_dataset(path, task="regression")


def test_npz_with_feature_names_and_multi_target_regression(tmp_path):
    path = tmp_path / "data.npz"
    x = np.arange(12.0).reshape(6, 2)
    np.savez(
        path, x=x, y=np.column_stack([x[:, 0] * 0.5, x[:, 1] + 0.25]), feature_names=["u", "v"]
    )
    dataset = load_dataset(str(path))
    assert dataset.task == "regression"
    assert dataset.feature_names == ["u", "v"]
    assert dataset.y.shape == (6, 2)
    assert dataset.target_names == ["y0", "y1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,y\n1,2,0\n3,4,1\n-inf,4,1\n", r"line 4, column 'a': '-inf' is not finite"),
        ("a,b,y\n1,2,0\n3,4,inf\n", r"line 3, column 'y': 'inf' is not finite"),
        ("a,b,y\n1,2,0\n3,4,\n", r"line 3, column 'y': 1 row\(s\) have no target value"),
        ("a,b,y\n1,2,0\n3,4\n", r"line 3 has 2 cells, the header has 3"),
        ("a,b,y\n1,2,7\n3,4,7\n", r"target 'y' has a single class '7'"),
        ("y\n1\n2\n", r"no feature columns besides the target 'y'"),
        ("", r"empty file"),
    ],
)
def test_bad_csv_names_the_problem_and_where(tmp_path, text, message):
    path = write_csv(tmp_path, text)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(path)
    assert path in str(caught.value)


def test_binary_file_named_csv_is_a_data_error(tmp_path):
    path = tmp_path / "image.csv"
    path.write_bytes(b"a,b\n\xff\xfe\x00\x01,2\n")
    with pytest.raises(DataError, match=r"image.csv: not UTF-8 text \(byte 4\)"):
        load_dataset(str(path))


def test_missing_target_column_lists_the_header(tmp_path):
    path = write_csv(tmp_path, "a,b\n1,2\n")
    named = r"target column 'label' is not in the header; the columns are \['a', 'b'\]"
    with pytest.raises(DataError, match=named):
        load_dataset(path, target="label")


def test_bad_npz_names_row_and_column(tmp_path):
    path = tmp_path / "bad.npz"
    x = np.ones((4, 3))
    x[2, 1] = np.inf
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"'x': row 2, column 1 is inf"):
        load_dataset(str(path))


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.ones((3, 2)), y=np.array([{"a": 1}, 2, 3], dtype=object))
    with pytest.raises(DataError, match="without pickle"):
        load_dataset(str(path))


def test_npz_missing_arrays_and_unknown_files(tmp_path):
    path = tmp_path / "only_x.npz"
    np.savez(path, x=np.ones((3, 2)))
    with pytest.raises(DataError, match=r"missing array 'y'"):
        load_dataset(str(path))
    with pytest.raises(DataError, match="no such data file"):
        load_dataset(str(tmp_path / "absent.csv"))
    (tmp_path / "data.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_dataset(str(tmp_path / "data.txt"))


def test_split_is_seeded_disjoint_and_complete():
    first = split_rows(100, dev_fraction=0.15, test_fraction=0.15, seed=3)
    again = split_rows(100, dev_fraction=0.15, test_fraction=0.15, seed=3)
    other = split_rows(100, dev_fraction=0.15, test_fraction=0.15, seed=4)
    np.testing.assert_array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)
    assert (len(first.train), len(first.dev), len(first.test)) == (70, 15, 15)
    everything = np.concatenate([first.train, first.dev, first.test])
    np.testing.assert_array_equal(np.sort(everything), np.arange(100))


def test_fewer_than_two_training_rows_is_an_error():
    with pytest.raises(DataError, match=r"3 rows leave 1 training row\(s\).*at least 2"):
        split_rows(3, dev_fraction=0.15, test_fraction=0.15, seed=0, source="tiny.csv")
    assert len(split_rows(4, dev_fraction=0.15, test_fraction=0.15, seed=0).train) == 2


def test_standardization_of_a_constant_column_uses_std_one():
    mean, std = fit_standardization(np.array([[1.0, 5.0], [5.0, 5.0]]))
    np.testing.assert_array_equal(mean, [3.0, 5.0])
    np.testing.assert_array_equal(std, [2.0, 1.0])


CELLS = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "a", "nan", "inf", "1e400", '"1,2"', "0x10", "1_0"]),
)
CSV_TEXT = st.lists(st.lists(CELLS, min_size=0, max_size=4), min_size=0, max_size=8).map(
    lambda rows: "\n".join(",".join(row) for row in rows)
)


def check_any_csv_loads_or_raises_data_error(tmp_path, text: str) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_text(text)
    try:
        dataset = load_dataset(str(path))
    except DataError as error:
        assert str(path) in str(error)
        return
    # NaN is a missing cell (the schema fills it); infinities are refused
    assert not np.any(np.isinf(dataset.x)) and dataset.x.shape[1] >= 1
    assert len(dataset.y) == len(dataset.x) >= 1


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=CSV_TEXT)
def test_any_csv_loads_or_raises_data_error(tmp_path, text):
    check_any_csv_loads_or_raises_data_error(tmp_path, text)


@pytest.mark.slow
@settings(
    max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=CSV_TEXT)
def test_any_csv_loads_or_raises_data_error_long(tmp_path, text):
    check_any_csv_loads_or_raises_data_error(tmp_path, text)
