"""Early stopping of hopeless trials: the median rule, or asynchronous successive halving.

Both compare a running trial's best dev error so far with reference curves: the trials that had
ended when this one started (so with more than one worker, which trials are pruned can depend on
timing; random search without early stopping does not).

- median: after every epoch t ≥ grace_epochs, stop when the trial's best by epoch t is worse
  than the median of what the reference trials had reached by epoch t.
- halving (asynchronous successive halving, as in ASHA): decisions only at the rungs, epochs
  grace_epochs·η^k; at a rung a trial goes on only while it is in the best 1/η of the trials that
  reached that rung (itself included), so about 1/η of the trials survive each rung.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RULES = ("none", "median", "halving")

Curves = tuple[tuple[float, ...], ...]  # per reference trial: dev error after each epoch


def _reached(reference_curves: Curves, epoch: int) -> list[float]:
    """The best dev error each reference trial had reached by `epoch` (those that got there)."""
    return [min(curve[:epoch]) for curve in reference_curves if len(curve) >= epoch]


@dataclass(frozen=True)
class MedianRule:
    """Stop a trial whose best dev error by epoch t is above the reference trials' median."""

    reference_curves: Curves
    grace_epochs: int = 3  # never stop before this many epochs
    min_reference: int = 4  # need at least this many reference trials that reached epoch t

    def should_stop(self, curve: Sequence[float]) -> bool:
        """curve: this trial's dev error after each epoch so far (epoch 1 first)."""
        epoch = len(curve)
        if epoch < self.grace_epochs:
            return False
        reached = _reached(self.reference_curves, epoch)
        if len(reached) < self.min_reference:
            return False
        return min(curve) > statistics.median(reached)


@dataclass(frozen=True)
class HalvingRule:
    """At rungs grace_epochs·η^k, stop a trial outside the best 1/η of those at the rung."""

    reference_curves: Curves
    grace_epochs: int = 3  # the first rung
    reduction: int = 3  # η: each rung keeps about 1/η of the trials that reach it
    min_reference: int = 4  # need at least this many reference trials at the rung

    def is_rung(self, epoch: int) -> bool:
        rung = self.grace_epochs
        while rung < epoch:
            rung *= self.reduction
        return rung == epoch

    def should_stop(self, curve: Sequence[float]) -> bool:
        """curve: this trial's dev error after each epoch so far (epoch 1 first)."""
        epoch = len(curve)
        if epoch < self.grace_epochs or not self.is_rung(epoch):
            return False
        reached = _reached(self.reference_curves, epoch)
        if len(reached) < self.min_reference:
            return False
        at_rung = sorted([*reached, min(curve)])
        kept = max(1, len(at_rung) // self.reduction)
        return min(curve) > at_rung[kept - 1]


def build_rule(spec: dict[str, Any] | None) -> MedianRule | HalvingRule | None:
    """The rule a trial request describes: {"rule": "median" | "halving", its fields…}."""
    if not spec:
        return None
    fields = {name: value for name, value in spec.items() if name != "rule"}
    fields["reference_curves"] = tuple(tuple(curve) for curve in fields["reference_curves"])
    rules: dict[str, type[MedianRule | HalvingRule]] = {
        "median": MedianRule,
        "halving": HalvingRule,
    }
    if spec["rule"] not in rules:
        raise ValueError(f"unknown early-stopping rule {spec['rule']!r}; one of {RULES[1:]}")
    return rules[spec["rule"]](**fields)
