"""Cross-validation folds of the training rows (train + dev; the test rows are never in a fold).

Classification folds are stratified: each class's rows are shuffled and dealt to the folds in
turn, so every fold holds each class in about the training share. Regression folds deal the rows
sorted by target (in shuffled blocks of K), so every fold spans the target's range.
"""

from __future__ import annotations

import numpy as np

from bnserve.training.data.loading import Split
from bnserve.training.errors import DataError


def fold_rows(
    rows: np.ndarray,
    y: np.ndarray,
    task: str,
    folds: int,
    seed: int,
    source: str = "data",
    repeat: int = 0,
) -> list[np.ndarray]:
    """Split row indices `rows` (R,) into `folds` disjoint sorted parts that together are `rows`.

    y: the labels (N,) or targets (N, T) of every row of the data set, indexed by `rows`.
    repeat: which drawing of the folds (repeated cross-validation); 0 is the first.
    DataError when a fold would miss a class (K above the smallest class count) or be empty.
    """
    if folds < 2:
        raise DataError(f"{source}: cross-validation needs at least 2 folds, got {folds}")
    rows = np.asarray(rows)
    if len(rows) < folds:
        raise DataError(f"{source}: {len(rows)} training rows cannot make {folds} folds")
    # its own stream, apart from the split's; each repeat another one
    rng = np.random.default_rng([seed, 2] if repeat == 0 else [seed, 2, repeat])
    fold_of = np.empty(len(rows), dtype=np.int64)
    if task == "classification":
        labels = y[rows]
        classes, counts = np.unique(labels, return_counts=True)
        if counts.min() < folds:
            smallest = classes[np.argmin(counts)]
            raise DataError(
                f"{source}: {folds} folds need at least {folds} training rows of every class; "
                f"class index {smallest} has {counts.min()} (use fewer folds)"
            )
        start = 0  # continue dealing where the previous class ended: fold sizes stay even
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            fold_of[members] = (start + np.arange(len(members))) % folds
            start += len(members)
    else:
        order = np.argsort(y[rows][:, 0], kind="stable")
        for block in range(0, len(order), folds):
            members = order[block : block + folds]
            fold_of[members] = rng.permutation(folds)[: len(members)]
    return [np.sort(rows[fold_of == fold]) for fold in range(folds)]


def fold_split(
    split: Split,
    y: np.ndarray,
    task: str,
    folds: int,
    fold: int,
    seed: int,
    source: str = "data",
    repeat: int = 0,
) -> Split:
    """Fold `fold` of the train + dev rows as dev, the other folds as train; test unchanged."""
    if not 0 <= fold < folds:
        raise DataError(f"fold {fold} is not in 0 … {folds - 1}")
    rows = np.concatenate([split.train, split.dev])
    parts = fold_rows(rows, y, task, folds, seed, source, repeat)
    train = np.sort(np.concatenate([part for index, part in enumerate(parts) if index != fold]))
    return Split(train=train, dev=parts[fold], test=split.test)
