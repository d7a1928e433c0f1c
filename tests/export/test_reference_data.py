"""`bnserve import --reference-data`: which columns of the file are the model's inputs. A file of
exactly the inputs is taken whole; a target is skipped only when named or when it is the one
column more than the inputs; other counts are refused, naming both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnserve.export.errors import ExportError
from bnserve.export.importer import ImportSettings, import_model
from bnserve.export.reference_data import read_reference_data
from tests.support.foreign_graphs import ForeignMlp, build_foreign

FEATURES = 5  # ForeignMlp's default
ROWS = np.round(np.random.default_rng(3).normal(3, 2, (30, FEATURES)), 4)


def _csv(path: Path, header: list[str], rows: np.ndarray) -> Path:
    lines = [",".join(header)] + [",".join(f"{v:g}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _with_labels(rows: np.ndarray, at: int) -> np.ndarray:
    labels = np.arange(len(rows)) % 3
    return np.insert(rows, at, labels, axis=1)


def test_a_file_of_exactly_the_inputs_is_taken_whole(tmp_path) -> None:
    # 5 columns for a 5-input model: the last one is an input, not a target.
    names = [f"f{i}" for i in range(FEATURES)]
    data = _csv(tmp_path / "inputs.csv", names, ROWS)
    x, found = read_reference_data(data, FEATURES, None)
    assert found == names
    np.testing.assert_array_equal(x, ROWS.astype(np.float32))
    source = tmp_path / "m.onnx"
    onnx.save(build_foreign(ForeignMlp()), str(source))
    out = tmp_path / "folded.onnx"
    report = import_model(ImportSettings(source=source, out=out, reference_data=data))
    assert report.verification.example_count == len(ROWS)
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(metadata["bnserve.feature_names"]) == names


def test_one_column_more_than_the_inputs_skips_the_last(tmp_path) -> None:
    header = [f"f{i}" for i in range(FEATURES)] + ["label"]
    data = _csv(tmp_path / "labelled.csv", header, _with_labels(ROWS, FEATURES))
    x, found = read_reference_data(data, FEATURES, None)
    assert found == header[:-1]
    np.testing.assert_array_equal(x, ROWS.astype(np.float32))


def test_a_named_target_is_skipped_wherever_it_is(tmp_path) -> None:
    header = ["label"] + [f"f{i}" for i in range(FEATURES)]
    data = _csv(tmp_path / "first.csv", header, _with_labels(ROWS, 0))
    x, found = read_reference_data(data, FEATURES, "label")
    assert found == header[1:]
    np.testing.assert_array_equal(x, ROWS.astype(np.float32))
    # Named but with the wrong count left over: refused with the count, not guessed.
    inputs_only = _csv(tmp_path / "inputs.csv", header[1:], ROWS)
    with pytest.raises(ExportError, match="4 input columns besides the target 'f4'"):
        read_reference_data(inputs_only, FEATURES, "f4")
    with pytest.raises(ExportError, match="--target 'price' is not a column"):
        read_reference_data(data, FEATURES, "price")


@pytest.mark.parametrize("columns", [FEATURES - 1, FEATURES + 2])
def test_other_counts_are_refused_naming_both(tmp_path, columns) -> None:
    rows = np.random.default_rng(1).normal(0, 1, (4, columns))
    data = _csv(tmp_path / "odd.csv", [f"c{i}" for i in range(columns)], rows)
    with pytest.raises(ExportError, match=f"{columns} columns, but the model takes {FEATURES}"):
        read_reference_data(data, FEATURES, None)


def test_parquet_and_npz_of_inputs_only(tmp_path) -> None:
    names = [f"f{i}" for i in range(FEATURES)]
    parquet = tmp_path / "inputs.parquet"
    pq.write_table(pa.table({n: ROWS[:, i] for i, n in enumerate(names)}), parquet)
    x, found = read_reference_data(parquet, FEATURES, None)
    assert found == names
    np.testing.assert_array_equal(x, ROWS.astype(np.float32))
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=ROWS)  # no 'y': inputs only
    x, found = read_reference_data(npz, FEATURES, None)
    assert found is None
    np.testing.assert_array_equal(x, ROWS.astype(np.float32))


def test_an_empty_cell_is_refused_with_its_place(tmp_path) -> None:
    data = tmp_path / "gap.csv"
    data.write_text("a,b,c,d,e\n1,2,3,4,5\n1,2,,4,5\n")
    with pytest.raises(ExportError, match="row 2, input 3 is empty or not finite"):
        read_reference_data(data, FEATURES, None)
