"""Random points on each dimension's own scale, coarse-to-fine boxes, and grids.

A point's randomness comes only from (tune seed, point index), so which worker ran which trial
never changes what a trial is.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.training.tune.errors import SpaceError, TuneSettingsError
from bnserve.training.tune.space import Dimension, SearchSpace

MAX_GRID_POINTS = 10_000


@dataclass(frozen=True)
class Box:
    """Where a round samples: per numeric dimension a (lo, hi) range of its search coordinate,
    per choice dimension the values still allowed."""

    ranges: dict[str, tuple[float, float]]
    choices: dict[str, tuple[Any, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranges": {name: list(bounds) for name, bounds in self.ranges.items()},
            "choices": {name: list(values) for name, values in self.choices.items()},
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Box:
        return cls(
            ranges={name: (float(lo), float(hi)) for name, (lo, hi) in values["ranges"].items()},
            choices={name: tuple(items) for name, items in values["choices"].items()},
        )


def full_box(space: SearchSpace) -> Box:
    """The original box: every dimension's whole range."""
    ranges: dict[str, tuple[float, float]] = {}
    choices: dict[str, tuple[Any, ...]] = {}
    for dimension in space.dimensions:
        if dimension.scale == "choice":
            choices[dimension.name] = dimension.choices
        else:
            ranges[dimension.name] = dimension.coordinate_bounds()
    return Box(ranges=ranges, choices=choices)


def point_rng(tune_seed: int, point_index: int) -> np.random.Generator:
    """The generator that samples point `point_index`: from the tune seed and the index alone."""
    return np.random.default_rng(np.random.SeedSequence([tune_seed, point_index]))


def trial_seed(tune_seed: int, point_index: int) -> int:
    """The training seed (initial weights, shuffling, dropout) of point `point_index`'s trials:
    from the tune seed and the index alone, in [0, 2**32). Both trials of a point under
    --compare-batchnorm share it, so they differ in batch norm only."""
    return int(np.random.SeedSequence([tune_seed, point_index, 1]).generate_state(1)[0])


def sample_point(space: SearchSpace, box: Box, rng: np.random.Generator) -> dict[str, Any]:
    """One point: uniform in each dimension's search coordinate (so log-uniform for `log`)."""
    point: dict[str, Any] = {}
    for dimension in space.dimensions:
        if dimension.scale == "choice":
            allowed = box.choices[dimension.name]
            point[dimension.name] = allowed[int(rng.integers(len(allowed)))]
        else:
            lo, hi = box.ranges[dimension.name]
            value = dimension.from_coordinate(float(rng.uniform(lo, hi)))
            if dimension.is_integer:
                value = _integer_inside(dimension, lo, hi, int(value))
            point[dimension.name] = value
    return point


def _integer_inside(dimension: Dimension, lo: float, hi: float, value: int) -> int:
    """Keep a rounded value among the integers the box (lo, hi) holds; a box too narrow to
    hold one gives the integer nearest its centre."""
    first = math.ceil(dimension.raw_value(lo) - 1e-9)
    last = math.floor(dimension.raw_value(hi) + 1e-9)
    if first > last:
        return int(dimension.from_coordinate((lo + hi) / 2))
    return min(max(value, first), last)


def shrink_box(
    space: SearchSpace, box: Box, ranked_points: list[dict[str, Any]], shrink: float
) -> Box:
    """The next round's box: each range `shrink` times as wide, centred on the best point's
    coordinate and slid back inside the original box; each choice keeps the ceil(shrink·n)
    values that did best (values never tried rank last, in their original order).

    ranked_points: the points tried so far, best first (at least one).
    """
    if not 0 < shrink < 1:
        raise TuneSettingsError(f"shrink factor {shrink!r} must be in (0, 1)")
    if not ranked_points:
        raise ValueError("cannot shrink a box around no points")
    original = full_box(space)
    best = ranked_points[0]
    ranges = {}
    for name, (lo, hi) in box.ranges.items():
        dimension = space.dimension(name)
        centre = dimension.to_coordinate(best[name])
        ranges[name] = _slide_inside(centre, shrink * (hi - lo), original.ranges[name])
    choices = {}
    for name, allowed in box.choices.items():
        seen_best_first = list(dict.fromkeys(p[name] for p in ranked_points if p[name] in allowed))
        ordered = seen_best_first + [value for value in allowed if value not in seen_best_first]
        choices[name] = tuple(ordered[: max(1, math.ceil(shrink * len(allowed)))])
    return Box(ranges=ranges, choices=choices)


def _slide_inside(centre: float, width: float, bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = centre - width / 2, centre + width / 2
    if lo < bounds[0]:
        lo, hi = bounds[0], bounds[0] + width
    if hi > bounds[1]:
        lo, hi = bounds[1] - width, bounds[1]
    return max(lo, bounds[0]), min(hi, bounds[1])


def round_sizes(total_trials: int, rounds: int) -> list[int]:
    """Split the trials over the rounds as evenly as possible, earlier rounds first."""
    base, extra = divmod(total_trials, rounds)
    return [base + (1 if index < extra else 0) for index in range(rounds)]


def grid_points(space: SearchSpace, points_per_dimension: int) -> list[dict[str, Any]]:
    """Every combination: numeric dimensions at evenly spaced search coordinates (ends included,
    duplicates after integer rounding dropped), choice dimensions at every value."""
    if points_per_dimension < 2:
        raise TuneSettingsError(f"--grid-points {points_per_dimension} must be ≥ 2")
    axes = []
    for dimension in space.dimensions:
        if dimension.scale == "choice":
            axes.append(list(dimension.choices))
            continue
        assert dimension.low is not None and dimension.high is not None
        lo, hi = dimension.to_coordinate(dimension.low), dimension.to_coordinate(dimension.high)
        values = [dimension.from_coordinate(c) for c in np.linspace(lo, hi, points_per_dimension)]
        axes.append(list(dict.fromkeys(values)))
    count = math.prod(len(axis) for axis in axes)
    if count > MAX_GRID_POINTS:
        raise SpaceError(
            f"grid of {count} points is over {MAX_GRID_POINTS}: use random search or fewer points"
        )
    names = space.names()
    return [dict(zip(names, combination, strict=True)) for combination in itertools.product(*axes)]
