"""Cross-validation folds: a partition of the train + dev rows, stratified, never a test row."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training.data.folds import fold_rows, fold_split
from bnserve.training.data.loading import load_dataset, split_rows
from bnserve.training.errors import DataError


@pytest.fixture(scope="module")
def digits():
    dataset = load_dataset("digits")
    split = split_rows(len(dataset.x), dev_fraction=0.15, test_fraction=0.15, seed=0)
    return dataset, split


@pytest.mark.parametrize(("folds", "repeat"), [(2, 0), (5, 0), (7, 0), (5, 2)])
def test_folds_partition_the_training_rows_and_never_hold_a_test_row(digits, folds, repeat):
    dataset, split = digits
    training = np.concatenate([split.train, split.dev])
    parts = fold_rows(training, dataset.y, "classification", folds, seed=0, repeat=repeat)
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == len(training)  # disjoint, nothing lost
    np.testing.assert_array_equal(np.sort(joined), np.sort(training))
    assert not np.intersect1d(joined, split.test).size
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    # stratified: each class's count per fold differs by at most one between folds
    for label in range(10):
        counts = [int(np.sum(dataset.y[part] == label)) for part in parts]
        assert max(counts) - min(counts) <= 1, (label, counts)


def test_each_fold_split_trains_on_the_other_folds_and_keeps_the_test_rows(digits):
    dataset, split = digits
    devs = []
    for fold in range(4):
        part = fold_split(split, dataset.y, "classification", 4, fold, seed=0)
        assert not np.intersect1d(part.train, part.dev).size
        np.testing.assert_array_equal(part.test, split.test)
        np.testing.assert_array_equal(
            np.sort(np.concatenate([part.train, part.dev])),
            np.sort(np.concatenate([split.train, split.dev])),
        )
        devs.append(part.dev)
    assert len(np.concatenate(devs)) == len(split.train) + len(split.dev)


def test_regression_folds_span_the_target_range():
    y = np.arange(100, dtype=np.float64)[:, None]
    parts = fold_rows(np.arange(100), y, "regression", 5, seed=3)
    assert sorted(np.concatenate(parts)) == list(range(100))
    for part in parts:  # one row of every block of five sorted targets
        np.testing.assert_array_equal(np.unique(part // 5), np.arange(20))


def test_the_same_seed_gives_the_same_folds_and_another_seed_others(digits):
    dataset, split = digits
    rows = np.concatenate([split.train, split.dev])
    a = fold_rows(rows, dataset.y, "classification", 3, seed=1)
    b = fold_rows(rows, dataset.y, "classification", 3, seed=1)
    c = fold_rows(rows, dataset.y, "classification", 3, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_each_repeat_draws_other_folds_and_the_first_is_the_plain_one(digits):
    dataset, split = digits
    rows = np.concatenate([split.train, split.dev])

    def folds(**repeat):
        return fold_rows(rows, dataset.y, "classification", 5, seed=1, **repeat)

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(folds(repeat=0), folds())  # the folds of a tune without repeats
    assert same(folds(repeat=1), folds(repeat=1))
    assert not same(folds(repeat=1), folds()) and not same(folds(repeat=1), folds(repeat=2))


def test_more_folds_than_a_class_has_rows_is_named():
    y = np.array([0] * 10 + [1] * 3)
    with pytest.raises(DataError, match=r"class index 1 has 3 .*use fewer folds"):
        fold_rows(np.arange(13), y, "classification", 4, seed=0, source="tiny.csv")
    with pytest.raises(DataError, match="at least 2 folds"):
        fold_rows(np.arange(13), y, "classification", 1, seed=0)
