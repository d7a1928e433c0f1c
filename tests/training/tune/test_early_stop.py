"""The early-stopping rules on hand-made curves: when each decides, and what it keeps."""

from __future__ import annotations

import pytest

from bnserve.training.tune.early_stop import HalvingRule, MedianRule, build_rule

# Eight reference trials whose best dev errors by any epoch are 0.1, 0.2, …, 0.8.
REFERENCES = tuple((0.9, *(0.1 * k,) * 11) for k in range(1, 9))


def test_halving_rungs_are_grace_times_powers_of_the_reduction():
    rule = HalvingRule(REFERENCES, grace_epochs=2, reduction=3)
    assert [epoch for epoch in range(1, 60) if rule.is_rung(epoch)] == [2, 6, 18, 54]


@pytest.mark.parametrize(
    ("best", "stops"),
    [(0.05, False), (0.25, False), (0.3, False), (0.35, True), (0.9, True)],
)
def test_halving_keeps_the_best_third_at_a_rung(best, stops):
    # At rung 2: 8 references + this trial = 9; the best 9 // 3 = 3 go on.
    rule = HalvingRule(REFERENCES, grace_epochs=2, reduction=3)
    assert rule.should_stop([0.95, best]) is stops


def test_halving_decides_nothing_between_rungs_or_without_enough_references():
    rule = HalvingRule(REFERENCES, grace_epochs=2, reduction=3)
    hopeless = [0.95] * 5
    assert [rule.should_stop(hopeless[:epoch]) for epoch in range(1, 6)] == [False, True] + [
        False
    ] * 3
    few = HalvingRule(REFERENCES[:3], grace_epochs=2, reduction=3, min_reference=4)
    assert not few.should_stop([0.95, 0.95])


def test_median_rule_compares_with_the_references_median_every_epoch():
    rule = MedianRule(REFERENCES, grace_epochs=2)
    assert not rule.should_stop([0.95])  # within the grace epochs
    assert not rule.should_stop([0.95, 0.4])  # median of 0.1…0.8 is 0.45
    assert rule.should_stop([0.95, 0.5])


def test_build_rule_reads_a_request_and_refuses_unknown_rules():
    spec = {"rule": "halving", "reference_curves": [[0.5, 0.4]], "grace_epochs": 1}
    rule = build_rule(spec)
    assert isinstance(rule, HalvingRule) and rule.reference_curves == ((0.5, 0.4),)
    assert build_rule(None) is None
    with pytest.raises(ValueError, match="unknown early-stopping rule 'asha'"):
        build_rule({**spec, "rule": "asha"})
