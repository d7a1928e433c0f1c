"""Early stopping of hopeless trials: the median rule, checked after every epoch.

A trial stops after epoch t (t ≥ grace_epochs) when its best dev error so far is worse than the
median of what the reference trials had reached by epoch t (the best of their first t epochs).
The reference curves are the trials that had ended when this one started, so with more than one
worker which trials are pruned can depend on timing (random search without it does not).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

RULES = ("none", "median")


@dataclass(frozen=True)
class MedianRule:
    """Stop a trial whose best dev error by epoch t is above the reference trials' median."""

    reference_curves: tuple[tuple[float, ...], ...]  # per reference trial: dev error per epoch
    grace_epochs: int = 3  # never stop before this many epochs
    min_reference: int = 4  # need at least this many reference trials that reached epoch t

    def should_stop(self, curve: list[float]) -> bool:
        """curve: this trial's dev error after each epoch so far (epoch 1 first)."""
        epoch = len(curve)
        if epoch < self.grace_epochs:
            return False
        reached = [
            min(reference[:epoch]) for reference in self.reference_curves if len(reference) >= epoch
        ]
        if len(reached) < self.min_reference:
            return False
        return min(curve) > statistics.median(reached)
