"""Early stopping on the dev objective: remember the best epoch, stop after `patience` without one.

An epoch is a new best when its dev objective (lower is better: the dev error of history.json)
is below the best so far by more than `min_delta`, or equals it exactly with a lower dev loss
(log loss or MSE): on a small dev set the error rate moves in steps of one row and stays flat
for many epochs while the model grows more or less sure of its answers. Training stops once
`patience` epochs in a row brought no new best; the run then keeps the best epoch's parameters
and running statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class BestEpoch:
    """The best epoch so far and how many epochs have passed without a better one."""

    patience: int | None  # None: never stop early (the best epoch is still tracked)
    min_delta: float = 0.0  # an improvement must exceed this to count
    epoch: int = 0  # the best epoch (0: none yet)
    value: float = math.inf  # its dev objective
    loss: float = math.inf  # its dev loss (breaks exact ties of the objective)
    last_epoch: int = 0  # the latest epoch seen

    def update(self, epoch: int, value: float | None, loss: float | None = None) -> bool:
        """Record epoch `epoch`'s dev objective and loss; True when it is the new best.

        None or non-finite values (no dev rows, a diverged net) are never a best."""
        self.last_epoch = epoch
        if value is None or not math.isfinite(value):
            return False
        loss = math.inf if loss is None or not math.isfinite(loss) else loss
        better = value < self.value - self.min_delta
        tie_won = value == self.value and loss < self.loss
        if self.epoch == 0 or better or tie_won:
            self.epoch, self.value, self.loss = epoch, value, loss
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """`patience` epochs in a row brought no new best."""
        return self.patience is not None and self.last_epoch - self.epoch >= self.patience

    @classmethod
    def replay(
        cls, history: list[dict[str, Any]], patience: int | None, min_delta: float
    ) -> BestEpoch:
        """The tracker after the epochs of `history` (a resumed run continues from it)."""
        best = cls(patience, min_delta)
        for record in history:
            best.update(int(record["epoch"]), record["dev_error"], record.get("dev_loss"))
        return best
