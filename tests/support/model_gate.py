"""Hold a served model's runs until the test releases them, so calls queue behind it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from bnserve.server.plane.batching import DynamicBatcher

Predict = Callable[[np.ndarray], list[np.ndarray]]


class ModelGate:
    """Wraps a batcher's predict: every run blocks until `release()`; rows run are recorded."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._inner: Predict = batcher._predict  # the seam this helper exists for
        self._open = threading.Event()
        self.runs: list[int] = []  # rows of each run, in order
        self.waiting = 0  # runs blocked at the gate right now
        batcher._predict = self._gated

    def _gated(self, x: np.ndarray) -> list[np.ndarray]:
        self.waiting += 1
        self._open.wait(30)
        self.waiting -= 1
        self.runs.append(x.shape[0])
        return self._inner(x)

    def release(self) -> None:
        self._open.set()
