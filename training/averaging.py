"""`--average-epochs N`: the mean weights of a run's last N epochs (Polyak averaging, as in SWA).

After each epoch e of the window (config.epochs − N, config.epochs] the parameters join a running
mean; the run exports that mean instead of the last epoch's weights, which are one noisy point of
the last epochs' walk. The running statistics are averaged too, only to be replaced: averaging is
allowed only with population statistics (config.py), which the run recomputes over the training
rows for the averaged weights (SWA's "bn_update"). A resumed run rebuilds the mean from the
window's checkpoints, so it equals an uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bnserve.training.run_meta import WeightAveragingFacts


class WeightAverage:
    """Running mean of parameter dicts over the epochs of one window, summed in float64."""

    def __init__(self, first_epoch: int, last_epoch: int) -> None:
        self.first_epoch = first_epoch  # the window's first epoch (from 1)
        self.last_epoch = last_epoch  # its last epoch: config.epochs
        self.epochs: list[int] = []  # the epochs added so far
        self._sums: dict[str, np.ndarray] = {}

    @classmethod
    def for_run(cls, average_epochs: int, total_epochs: int) -> WeightAverage:
        """The window of the last `average_epochs` of `total_epochs`."""
        return cls(max(1, total_epochs - average_epochs + 1), total_epochs)

    def covers(self, epoch: int) -> bool:
        return self.first_epoch <= epoch <= self.last_epoch

    def add(self, epoch: int, params: dict[str, np.ndarray]) -> None:
        """Add epoch `epoch`'s parameters (any float dtype) if the window covers it."""
        if not self.covers(epoch):
            return
        for name, array in params.items():
            total = self._sums.get(name)
            as_float64 = np.asarray(array, dtype=np.float64)
            self._sums[name] = as_float64.copy() if total is None else total + as_float64
        self.epochs.append(epoch)

    def mean(self, dtype: type[np.floating]) -> dict[str, np.ndarray]:
        """The mean of the added parameters, in `dtype`; {} when none was added."""
        count = len(self.epochs)
        return {name: (total / count).astype(dtype) for name, total in self._sums.items()}

    def replay(
        self, trained_epochs: int, load_params: Callable[[int], dict[str, np.ndarray]]
    ) -> None:
        """Add the window's epochs up to `trained_epochs` from their checkpoints (a resume)."""
        for epoch in range(self.first_epoch, min(trained_epochs, self.last_epoch) + 1):
            self.add(epoch, load_params(epoch))

    def describe(self) -> WeightAveragingFacts:
        """What meta.json records: the window asked for and the epochs actually averaged."""
        return WeightAveragingFacts(
            epochs=self.last_epoch - self.first_epoch + 1,
            first_epoch=self.epochs[0] if self.epochs else None,
            last_epoch=self.epochs[-1] if self.epochs else None,
            averaged=len(self.epochs),
        )
