"""A classification target must look like class labels (training/data/targets.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training.data.targets import MIN_ROWS_PER_CLASS, check_class_counts
from bnserve.training.errors import DataError


def _labels(counts: list[int]) -> tuple[np.ndarray, list[str]]:
    y = np.repeat(np.arange(len(counts)), counts)
    return y, [str(index) for index in range(len(counts))]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([1] * 200, "200 classes in 200 rows (1 per class)"),  # a continuous target
        ([MIN_ROWS_PER_CLASS - 1] * 10, "10 classes in 40 rows (4 per class)"),
        ([30, 30, 1, 1, 1], "3 of the 5 classes have a single example"),
    ],
)
def test_labels_that_cannot_be_learned_are_refused_with_the_rule(
    counts: list[int], message: str
) -> None:
    y, names = _labels(counts)
    with pytest.raises(DataError) as raised:
        check_class_counts(y, names, "data.csv")
    assert f"data.csv: {message}" in str(raised.value)
    assert "at least 5 rows per class on average" in str(raised.value)
    assert "--task regression" in str(raised.value)


@pytest.mark.parametrize(
    "counts",
    [[MIN_ROWS_PER_CLASS] * 10, [178] * 10, [40, 1], [50, 50, 50, 1, 1]],
)
def test_real_class_labels_pass(counts: list[int]) -> None:
    check_class_counts(*_labels(counts), "data.csv")
