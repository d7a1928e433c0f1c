"""`bnserve train --data DIR`: a directory is the concatenation of its CSV files in name order;
files whose columns differ, or no files, are one-line errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from bnserve.training.cli import main
from bnserve.training.data.loading import load_dataset
from bnserve.training.errors import DataError


def _table(rows: np.ndarray, labels: list[str]) -> str:
    lines = ["a,b,c,kind"] + [
        ",".join(f"{v:g}" for v in row) + f",{label}"
        for row, label in zip(rows, labels, strict=True)
    ]
    return "\n".join(lines) + "\n"


def test_a_directory_is_its_files_in_name_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 9, (30, 3)).astype(np.float32) for _ in range(3)]
    labels = [[("x", "y")[i % 2] for i in range(30)] for _ in range(3)]
    (tmp_path / "2-second.csv").write_text(_table(parts[1], labels[1]))
    with gzip.open(tmp_path / "3-third.csv.gz", "wt") as handle:
        handle.write(_table(parts[2], labels[2]))
    (tmp_path / "1-first.csv").write_text(_table(parts[0], labels[0]))
    (tmp_path / ".4-hidden.csv").write_text("not,a,table\n")  # hidden files are not read
    (tmp_path / "notes.txt").write_text("neither are other files\n")
    dataset = load_dataset(str(tmp_path), target="kind", cache_dir="off")
    np.testing.assert_array_equal(np.asarray(dataset.x), np.concatenate(parts))
    assert dataset.source == str(tmp_path)


def test_a_directory_that_is_not_one_table_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.csv").write_text("a,b,kind\n1,2,x\n")
    (tmp_path / "b.csv").write_text("a,c,kind\n1,2,x\n")
    with pytest.raises(DataError, match=r"b\.csv: its columns .* differ from a\.csv"):
        load_dataset(str(tmp_path), target="kind")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data", str(empty), "--out", str(tmp_path / "run"), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no .csv or .csv.gz files" in err[0] and "Traceback" not in err[0]
