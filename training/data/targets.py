"""Does a classification target look like class labels? Refuse what looks like a continuous one.

The rule: at least MIN_ROWS_PER_CLASS rows per class on average, and at most half of the classes
seen only once. A real-valued target asked to be classified fails both (every value its own class).
"""

from __future__ import annotations

import numpy as np

from bnserve.training.errors import DataError

MIN_ROWS_PER_CLASS = 5  # on average over all classes


def check_class_counts(y: np.ndarray, class_names: list[str], source: str) -> None:
    """y: (N,) int64 class indices. DataError says why the classes cannot be learned."""
    counts = np.bincount(y, minlength=len(class_names))
    n_rows, n_classes = len(y), len(class_names)
    singletons = int(np.sum(counts == 1))
    rule = (
        f"classification needs at least {MIN_ROWS_PER_CLASS} rows per class on average and at "
        "most half the classes seen once; for a numeric target use --task regression"
    )
    if n_classes * MIN_ROWS_PER_CLASS > n_rows:
        raise DataError(
            f"{source}: {n_classes} classes in {n_rows} rows ({n_rows / n_classes:.3g} per class); "
            + rule
        )
    if singletons * 2 > n_classes:
        raise DataError(
            f"{source}: {singletons} of the {n_classes} classes have a single example; " + rule
        )
