"""The capture writer's number text: every float32 comes back exactly, NaN (missing) is an
empty cell, ±inf stays inf, and an empty block has no rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnserve.server.capture.writer import _column_cells, _numbers


def _parse(rows: list[str], width: int) -> np.ndarray:
    cells = [[float(c) if c else np.nan for c in row.split(",")] for row in rows]
    return np.array(cells, dtype=np.float32).reshape(len(rows), width)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_every_float32_comes_back_exactly(block: np.ndarray) -> None:
    rows = _numbers(block)
    assert len(rows) == block.shape[0]
    back = _parse(rows, block.shape[1])
    np.testing.assert_array_equal(back, block)  # NaN where NaN, ±inf where ±inf


def test_missing_is_an_empty_cell_and_infinity_is_kept() -> None:
    assert _numbers(np.array([[1.0, np.nan, 0.1]], np.float32)) == ["1.0,,0.1"]
    assert _numbers(np.array([[np.inf, np.nan, -np.inf]], np.float32)) == ["inf,,-inf"]
    assert _numbers(np.zeros((0, 3), np.float32)) == []
    assert _column_cells(np.array([2.5, np.nan], np.float32)) == ["2.5", ""]
    assert _column_cells(np.array(["a,b", None], object)) == ['"a,b"', ""]
