"""The search space: file formats, flags, each scale's coordinate, and bad input named clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnserve.training.tune.errors import SpaceError
from bnserve.training.tune.space import (
    DEFAULT_SPACE,
    Dimension,
    build_space,
    load_space_file,
    parse_param_flag,
)

TOML_SPACE = """
[fixed]
epochs = 4
hidden = [32, 32]

[search.lr]
scale = "log"
low = 1e-4
high = 1

[search.beta1]
scale = "log1m"
low = 0.9
high = 0.999

[search.batch_size]
choice = [32, 64, 128]
"""


def test_toml_and_json_files_give_the_same_space(tmp_path):
    toml_path = tmp_path / "space.toml"
    toml_path.write_text(TOML_SPACE)
    from_toml = build_space(load_space_file(toml_path))
    json_path = tmp_path / "space.json"
    json_path.write_text(json.dumps(from_toml.to_dict()))
    from_json = build_space(load_space_file(json_path))
    assert from_toml == from_json
    assert from_toml.names() == ["batch_size", "beta1", "lr"]  # sorted: file order never matters
    assert from_toml.dimension("lr") == Dimension("lr", "log", 1e-4, 1.0)
    assert from_toml.base_config().epochs == 4


def test_default_space_is_valid():
    space = build_space(DEFAULT_SPACE)
    assert {"lr", "beta1", "units", "layers", "batch_size"} <= set(space.names())


def test_param_flags_add_and_override_dimensions():
    space = build_space(
        {"fixed": {}, "search": {"lr": {"scale": "linear", "low": 0.1, "high": 0.2}}},
        params=["lr=log:1e-3:1e-1", "optimizer=choice:adam,momentum", "units=log_int:16:256"],
    )
    assert space.dimension("lr") == Dimension("lr", "log", 1e-3, 1e-1)
    assert space.dimension("optimizer").choices == ("adam", "momentum")
    assert space.dimension("units").scale == "log_int"
    assert parse_param_flag("batch_size=choice:32,64") == ("batch_size", {"choice": [32, 64]})


@pytest.mark.parametrize(
    ("scale", "low", "high", "value", "coordinate"),
    [
        ("log", 1e-4, 1.0, 1e-3, -3.0),
        ("log1m", 0.9, 0.999, 0.99, -2.0),
        ("linear", 0.0, 0.5, 0.25, 0.25),
        ("int", 1, 4, 3, 3.0),
    ],
)
def test_coordinates_round_trip_on_each_scale(scale, low, high, value, coordinate):
    dimension = Dimension("x", scale, low, high)
    assert dimension.to_coordinate(value) == pytest.approx(coordinate)
    assert dimension.from_coordinate(coordinate) == pytest.approx(value)


def test_log1m_bounds_run_from_one_minus_high_to_one_minus_low():
    assert Dimension("beta1", "log1m", 0.9, 0.999).coordinate_bounds() == pytest.approx((-3, -1))


def test_integer_dimensions_widen_by_half_so_the_ends_are_as_likely_as_the_middle():
    assert Dimension("layers", "int", 1, 3).coordinate_bounds() == (0.5, 3.5)
    assert Dimension("layers", "int", 1, 3).from_coordinate(3.49) == 3


def test_layers_and_units_build_hidden():
    space = build_space({"fixed": {"hidden": [64, 64]}, "search": {}}, params=["units=int:8:16"])
    assert space.config_for({"units": 12}).hidden == (12, 12)
    space = build_space({"fixed": {"hidden": [64]}, "search": {}}, params=["layers=int:1:3"])
    assert space.config_for({"layers": 3}).hidden == (64, 64, 64)


def test_zero_layers_is_a_linear_model():
    space = build_space(DEFAULT_SPACE, params=["layers=int:0:3"])
    assert space.config_for({"layers": 0, "units": 64}).hidden == ()
    low, _ = space.dimension("layers").coordinate_bounds()
    assert space.dimension("layers").from_coordinate(low) == 0
    with pytest.raises(SpaceError, match=r"'layers' reaches 2, .* layers = 2 needs a width"):
        build_space({"fixed": {"hidden": []}, "search": {}}, params=["layers=int:0:2"])


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"learning_rate": {"scale": "log", "low": 1e-4, "high": 1}},
            "unknown hyperparameter 'learning_rate'",
        ),
        ({"lr": {"scale": "log", "low": 0.1, "high": 0.1}}, "'lr': low = 0.1 must be < high = 0.1"),
        (
            {"lr": {"scale": "linear", "low": 1.0, "high": 0.5}},
            "'lr': low = 1.0 must be < high = 0.5",
        ),
        ({"lr": {"scale": "log", "low": 0, "high": 1}}, "'lr': a log range must stay above 0"),
        ({"l2": {"scale": "log", "low": -1, "high": 1}}, "'l2': a log range must stay above 0"),
        ({"beta1": {"scale": "log1m", "low": 0.9, "high": 1.0}}, "'beta1': a log1m range"),
        ({"beta2": {"scale": "log1m", "low": 0, "high": 0.99}}, "got 0"),
        ({"beta1": {"scale": "linear", "low": 0.5, "high": 1.0}}, "'beta1' reaches 1.0"),
        ({"dropout": {"scale": "linear", "low": 0.0, "high": 1.0}}, "'dropout' reaches 1.0"),
        ({"optimizer": {"choice": ["adam", "lbfgs"]}}, "'optimizer' reaches 'lbfgs'"),
        ({"optimizer": {"choice": []}}, "'optimizer': choice must be a non-empty list"),
        ({"lr": {"scale": "cubic", "low": 1, "high": 2}}, "'lr': scale 'cubic' is not one of"),
        ({"lr": {"scale": "log", "low": "1e-4", "high": 1}}, "'lr': low = '1e-4' is not a number"),
        ({"units": {"scale": "int", "low": 8.5, "high": 16}}, "integer range needs integer ends"),
        ({"seed": {"scale": "int", "low": 0, "high": 9}}, "unknown hyperparameter 'seed'"),
        # was a ValueError traceback mid-tune, when a trial drew epochs = 2.27
        ({"epochs": {"scale": "linear", "low": 1, "high": 3}}, "'epochs' is a whole number"),
        ({"batch_size": {"scale": "log", "low": 16, "high": 64}}, "use scale int or log_int"),
    ],
)
def test_bad_dimensions_are_named_with_their_value(search, message):
    with pytest.raises(SpaceError) as raised:
        build_space({"fixed": {}, "search": search})
    assert message in str(raised.value)


def test_bad_fixed_setting_and_empty_search_are_refused():
    with pytest.raises(SpaceError, match=r"\[fixed\].*epochs"):
        build_space({"fixed": {"epochs": 0}, "search": {"lr": {"choice": [0.1]}}})
    with pytest.raises(SpaceError, match="no dimension to search"):
        build_space({"fixed": {}, "search": {}})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("space.toml", "[search.lr\nscale=", "not valid TOML"),
        ("space.json", "{", "not valid JSON"),
        ("space.yaml", "a: 1", "must end in .toml or .json"),
        ("space.toml", "[serch.lr]\nscale='log'", "unknown top-level key(s) ['serch']"),
    ],
)
def test_bad_space_files_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpaceError) as raised:
        load_space_file(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_missing_space_file_is_named(tmp_path):
    with pytest.raises(SpaceError, match="cannot read the space file"):
        load_space_file(tmp_path / "nope.toml")


@pytest.mark.parametrize("flag", ["lr", "lr=log:1", "lr=cubic:1:2", "=log:1:2"])
def test_malformed_param_flags(flag):
    with pytest.raises(SpaceError, match="--param"):
        parse_param_flag(flag)


def test_the_example_space_file_loads():
    example = Path(__file__).parents[3] / "training" / "tune" / "example_space.toml"
    space = build_space(load_space_file(example))
    assert space.dimension("beta1").coordinate_bounds() == pytest.approx((-2, -1))
    assert space.base_config().epochs == 20


def test_the_default_space_regularizes_on_the_right_scales():
    space = build_space(DEFAULT_SPACE)
    scales = {d.name: (d.scale, d.low, d.high) for d in space.dimensions if d.scale != "choice"}
    assert scales["l2"][0] == "log" and scales["l2"][2] >= 1e-2
    assert scales["dropout"] == ("linear", 0.0, 0.5)
    assert scales["layers"][0] == "int" and scales["layers"][1] == 1
    assert scales["units"][0] == "log_int" and scales["units"][1] <= 8
    assert scales["lr"][0] == "log"
    assert space.base_config().early_stopping is not None  # trials keep their best epoch


def test_tune_help_documents_every_default_range(capsys):
    from bnserve.training.tune.cli import build_parser

    text = build_parser().format_help()
    for dimension in build_space(DEFAULT_SPACE).dimensions:
        assert dimension.describe() in text
    assert "fixed: epochs = 200, early_stopping = 15" in text


def test_the_recipes_are_tuner_dimensions():
    from bnserve.training.tune import sampler

    flags = ["weight_decay=log:1e-4:1e-1", "label_smoothing=linear:0:0.2",
             "lr_schedule=choice:constant,cosine,onecycle", "warmup_epochs=int:0:5",
             "target_transform=choice:none,log",
             "input_scaling=choice:standard,robust"]  # fmt: skip
    space = build_space(DEFAULT_SPACE, params=flags)
    box = sampler.full_box(space)
    points = [sampler.sample_point(space, box, sampler.point_rng(0, i)) for i in range(20)]
    configs = [space.config_for(point) for point in points]
    assert all(1e-4 <= config.weight_decay <= 1e-1 for config in configs)
    assert all(0 <= config.label_smoothing <= 0.2 for config in configs)
    assert {config.lr_schedule for config in configs} == {"constant", "cosine", "onecycle"}
    assert {config.target_transform for config in configs} == {"none", "log"}
    assert {config.input_scaling for config in configs} == {"standard", "robust"}
    assert "input_scaling" not in build_space(DEFAULT_SPACE).names()  # measured, not kept
    with pytest.raises(SpaceError, match="lr_schedule"):
        build_space(DEFAULT_SPACE, params=["lr_schedule=choice:constant,step"])
