"""Samplers put points where each scale says, per-point seeds, coarse-to-fine boxes, grids."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training.tune import sampler
from bnserve.training.tune.errors import SpaceError, TuneSettingsError
from bnserve.training.tune.space import build_space

N_SAMPLES = 4000
# Binomial standard deviation for p = 0.25 and n = 4000 is 0.007: 0.035 is five of them.
TOLERANCE = 0.035


def _space(**search):
    return build_space({"fixed": {}, "search": search})


def _samples(space, box=None, n=N_SAMPLES, seed=0):
    box = box or sampler.full_box(space)
    return [sampler.sample_point(space, box, sampler.point_rng(seed, i)) for i in range(n)]


def test_log_scale_puts_a_quarter_of_alpha_in_each_decade():
    space = _space(lr={"scale": "log", "low": 1e-4, "high": 1.0})
    lr = np.array([point["lr"] for point in _samples(space)])
    assert lr.min() >= 1e-4 and lr.max() <= 1.0
    shares = np.histogram(np.log10(lr), bins=[-4, -3, -2, -1, 0])[0] / len(lr)
    np.testing.assert_allclose(shares, 0.25, atol=TOLERANCE)


def test_log1m_scale_puts_half_of_beta_below_0_99():
    space = _space(beta1={"scale": "log1m", "low": 0.9, "high": 0.999})
    beta = np.array([point["beta1"] for point in _samples(space)])
    assert beta.min() >= 0.9 and beta.max() <= 0.999
    assert np.mean(beta < 0.99) == pytest.approx(0.5, abs=TOLERANCE)
    # a linear draw would put 91% below 0.99: the scale is what matters
    assert np.mean(beta < 0.95) == pytest.approx(np.log10(10 / 5) / 2, abs=TOLERANCE)


def test_integers_and_choices_are_uniform_including_the_ends():
    space = _space(
        layers={"scale": "int", "low": 1, "high": 4},
        batch_size={"choice": [32, 64, 128, 256]},
    )
    points = _samples(space)
    for name, values in (("layers", [1, 2, 3, 4]), ("batch_size", [32, 64, 128, 256])):
        drawn = [point[name] for point in points]
        assert sorted(set(drawn)) == values
        shares = [drawn.count(value) / len(drawn) for value in values]
        np.testing.assert_allclose(shares, 0.25, atol=TOLERANCE)
        assert all(isinstance(value, int) for value in drawn)


def test_log_int_is_log_uniform_over_integers():
    space = _space(units={"scale": "log_int", "low": 10, "high": 1000})
    units = np.array([point["units"] for point in _samples(space)])
    assert units.min() >= 10 and units.max() <= 1000
    assert np.mean(units < 100) == pytest.approx(0.5, abs=TOLERANCE)


def test_a_point_depends_only_on_the_tune_seed_and_its_index():
    space = _space(
        lr={"scale": "log", "low": 1e-4, "high": 1.0},
        dropout={"scale": "linear", "low": 0, "high": 0.5},
    )
    forwards = _samples(space, n=20)
    box = sampler.full_box(space)
    backwards = [
        sampler.sample_point(space, box, sampler.point_rng(0, i)) for i in reversed(range(20))
    ]
    assert forwards == backwards[::-1]
    assert forwards != _samples(space, n=20, seed=1)
    assert len({point["lr"] for point in forwards}) == 20


def _ranked_near(space, best):
    """Points best first: `best`, then two others."""
    others = _samples(space, n=2, seed=7)
    return [best, *others]


@pytest.mark.parametrize("shrink", [0.5, 0.3])
def test_box_shrinks_around_the_best_point_on_each_scale(shrink):
    space = _space(
        lr={"scale": "log", "low": 1e-4, "high": 1.0},
        beta1={"scale": "log1m", "low": 0.9, "high": 0.999},
        dropout={"scale": "linear", "low": 0.0, "high": 0.5},
    )
    original = sampler.full_box(space)
    best = {"lr": 1e-2, "beta1": 0.99, "dropout": 0.25}
    box = sampler.shrink_box(space, original, _ranked_near(space, best), shrink)
    for name, (lo, hi) in box.ranges.items():
        full_lo, full_hi = original.ranges[name]
        assert hi - lo == pytest.approx(shrink * (full_hi - full_lo))
        centre = space.dimension(name).to_coordinate(best[name])
        assert (lo + hi) / 2 == pytest.approx(centre)
    assert box.ranges["lr"] == pytest.approx((-2 - 2 * shrink, -2 + 2 * shrink))
    for point in _samples(space, box=box, n=500):
        for name, (lo, hi) in box.ranges.items():
            assert lo - 1e-12 <= space.dimension(name).to_coordinate(point[name]) <= hi + 1e-12


def test_box_at_the_edge_slides_inside_the_original_box_and_keeps_its_width():
    space = _space(lr={"scale": "log", "low": 1e-4, "high": 1.0})
    original = sampler.full_box(space)
    box = original
    for _ in range(4):
        box = sampler.shrink_box(space, box, [{"lr": 0.9}], 0.5)
        lo, hi = box.ranges["lr"]
        assert -4 <= lo < hi <= 0
    assert box.ranges["lr"] == pytest.approx((-0.25, 0.0))


def test_repeated_rounds_close_in_on_the_best_point():
    space = _space(
        lr={"scale": "log", "low": 1e-4, "high": 1.0},
        units={"scale": "int", "low": 8, "high": 256},
    )
    box = sampler.full_box(space)
    best = {"lr": 3e-3, "units": 100}
    widths = []
    for _ in range(5):
        box = sampler.shrink_box(space, box, [best], 0.5)
        widths.append(box.ranges["lr"][1] - box.ranges["lr"][0])
        assert box.ranges["lr"][0] <= np.log10(3e-3) <= box.ranges["lr"][1]
        assert box.ranges["units"][0] <= 100 <= box.ranges["units"][1]
    assert widths == pytest.approx([2, 1, 0.5, 0.25, 0.125])


def test_choices_keep_the_values_that_did_best():
    space = _space(
        optimizer={"choice": ["sgd", "momentum", "rmsprop", "adam"]},
        lr={"scale": "log", "low": 1e-4, "high": 1.0},
    )
    ranked = [
        {"optimizer": "adam", "lr": 1e-3},
        {"optimizer": "sgd", "lr": 1e-1},
        {"optimizer": "adam", "lr": 1e-2},
    ]
    box = sampler.shrink_box(space, sampler.full_box(space), ranked, 0.5)
    assert box.choices["optimizer"] == ("adam", "sgd")
    box = sampler.shrink_box(space, box, ranked, 0.5)
    assert box.choices["optimizer"] == ("adam",)
    assert {p["optimizer"] for p in _samples(space, box=box, n=50)} == {"adam"}


def test_shrink_outside_zero_one_is_refused():
    space = _space(lr={"scale": "log", "low": 1e-4, "high": 1.0})
    with pytest.raises(TuneSettingsError, match=r"shrink factor 1\.5"):
        sampler.shrink_box(space, sampler.full_box(space), [{"lr": 0.1}], 1.5)


def test_box_survives_a_json_round_trip():
    space = _space(lr={"scale": "log", "low": 1e-4, "high": 1.0}, batch_size={"choice": [32, 64]})
    box = sampler.full_box(space)
    assert sampler.Box.from_dict(box.to_dict()) == box


def test_round_sizes_split_the_trials():
    assert sampler.round_sizes(20, 3) == [7, 7, 6]
    assert sum(sampler.round_sizes(101, 4)) == 101


def test_grid_spaces_each_dimension_on_its_own_scale():
    space = _space(
        lr={"scale": "log", "low": 1e-4, "high": 1.0},
        beta1={"scale": "log1m", "low": 0.9, "high": 0.999},
        layers={"scale": "int", "low": 1, "high": 2},
        optimizer={"choice": ["adam", "sgd"]},
    )
    points = sampler.grid_points(space, 3)
    assert len(points) == 3 * 3 * 2 * 2  # layers has only 2 distinct integers
    assert sorted({p["lr"] for p in points}) == pytest.approx([1e-4, 1e-2, 1.0])
    assert sorted({p["beta1"] for p in points}) == pytest.approx([0.9, 0.99, 0.999])
    with pytest.raises(SpaceError, match="over 10000"):
        sampler.grid_points(space, 60)


def test_integers_in_a_shrunk_box_stay_inside_it():
    space = _space(
        layers={"scale": "int", "low": 1, "high": 3},
        units={"scale": "log_int", "low": 16, "high": 512},
    )
    box = sampler.shrink_box(space, sampler.full_box(space), [{"layers": 2, "units": 64}], 0.5)
    assert box.ranges["layers"] == pytest.approx((1.25, 2.75))
    points = _samples(space, box=box, n=500)
    assert {p["layers"] for p in points} == {2}
    units_lo, units_hi = (10**c for c in box.ranges["units"])
    assert all(units_lo <= p["units"] <= units_hi for p in points)
    assert len({p["units"] for p in points}) > 20
    narrow = sampler.Box(ranges={"layers": (2.6, 2.9), "units": box.ranges["units"]}, choices={})
    assert {p["layers"] for p in _samples(space, box=narrow, n=50)} == {3}
