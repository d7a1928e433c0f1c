"""The one-pass mixed CSV reader (mixed_csv.py) read in pieces of a few lines: whatever a piece
shows first (numbers in a column that holds text later, a missing stretch, a date, a late
typo), the stored values, vocabularies and errors equal those of the file read as one piece."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from bnserve.training.data import readers
from bnserve.training.errors import DataError


def read(path, monkeypatch, piece_bytes: int | None) -> tuple[np.ndarray, readers.TableInfo]:
    if piece_bytes is not None:
        monkeypatch.setattr(readers, "MIXED_BLOCK_BYTES", piece_bytes)
    sink = io.BytesIO()
    info = readers.read_table(path, "label", sink)
    x = np.frombuffer(sink.getvalue(), dtype=np.float32).reshape(info.rows, -1)
    return x, info


def table_text(rows: int) -> str:
    """Columns that each look like numbers (or nothing) in the first pieces and differ later."""
    lines = ["zip,size,late,when,gap,count,label"]
    for i in range(rows):
        zip_code = "n/a" if i == rows - 5 else f"{1000 + i % 7}"  # text only near the end
        size = " NA " if i % 9 == 4 else f" {i % 11 / 4} "  # padded numbers and missing token
        late = "" if i < rows // 2 else ("inf" if i == rows - 3 else ("x", "NAN")[i % 2])
        when = f"2024-01-{1 + i % 28:02d}"  # pyarrow would read dates: text here
        gap = "" if i < rows - 10 else "7"  # missing, then numbers
        lines.append(f"{zip_code},{size},{late},{when},{gap},{i % 5},{'ab'[i % 2]}")
    return "\n".join(lines) + "\n"


def test_pieces_of_a_few_lines_read_as_the_whole_file(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    path.write_text(table_text(200))
    whole_x, whole = read(path, monkeypatch, None)
    x, info = read(path, monkeypatch, 64)  # each piece a line or two
    np.testing.assert_array_equal(x, whole_x)  # NaN where NaN
    assert info.vocabularies == whole.vocabularies
    assert whole.vocabularies[0] is not None and whole.vocabularies[0][:2] == ("1000", "1001")
    assert "n/a" in whole.vocabularies[0]
    assert whole.vocabularies[1] is None and np.isnan(whole_x[4, 1]) and whole_x[1, 1] == 0.25
    late = whole.vocabularies[2]
    assert late is not None and set(late) == {"x", "NAN", "inf"}  # inf: a level of a text column
    assert whole.vocabularies[3] is not None and whole.vocabularies[3][0] == "2024-01-01"
    assert whole.vocabularies[4] is None and np.isnan(whole_x[0, 4]) and whole_x[-1, 4] == 7
    assert whole.vocabularies[5] is None
    np.testing.assert_array_equal(info.target.codes, whole.target.codes)


@pytest.mark.parametrize(
    ("cell", "message"),
    [("inf", "'inf' is not finite"), ("-1e39", "'-1e39' is not finite (beyond float32)")],
)
def test_a_late_cell_that_is_not_finite_is_named_by_its_line(tmp_path, monkeypatch, cell, message):
    lines = ["size,colour,label"] + [f"{i % 13},{'rg'[i % 2]},{'ab'[i % 2]}" for i in range(80)]
    lines[70] = f"{cell},r,a"
    lines[75] = f"{cell},g,b"  # the first one is named
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    for piece_bytes in (None, 64):
        with pytest.raises(DataError, match=re.escape(f"t.csv: line 71, column 'size': {message}")):
            read(path, monkeypatch, piece_bytes)
