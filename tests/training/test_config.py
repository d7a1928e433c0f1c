"""TrainConfig: defaults, from_dict/to_dict round trip, validation naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnserve.training import optim
from bnserve.training.config import OPTIMIZERS, TrainConfig
from bnserve.training.train import optimizer_settings


def test_round_trip_through_json():
    config = TrainConfig(hidden=(32, 16), optimizer="rmsprop", lr=3e-4, stats="population")
    restored = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.hidden == (32, 16)


def test_from_dict_converts_json_types():
    config = TrainConfig.from_dict({"hidden": "64,32", "lr": 1, "epochs": 5.0})
    assert config.hidden == (64, 32) and config.lr == 1.0 and config.epochs == 5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"hidden": [64, 0]}, r"'hidden' = \(64, 0\) is invalid: must be ≥ 1 unit per layer"),
        ({"lr": 0}, r"'lr' = 0.0 is invalid: must be > 0"),
        ({"lr": -0.1}, r"'lr' = -0.1 is invalid: must be > 0"),
        ({"beta1": 1.0}, r"'beta1' = 1.0 is invalid: must be in \[0, 1\)"),
        ({"bn_momentum": 0.0}, r"'bn_momentum' = 0.0 is invalid: must be in \(0, 1\]"),
        ({"batch_size": 1}, r"'batch_size' = 1 is invalid: must be ≥ 2 \(batch norm"),
        ({"dropout": 1.0}, r"'dropout' = 1.0 is invalid"),
        ({"activation": "gelu"}, r"'activation' = 'gelu' is invalid"),
        ({"running_var": "sample"}, r"'running_var' = 'sample' is invalid"),
        ({"epochs": 2.5}, r"config field 'epochs': expected an integer, got 2.5"),
        ({"batchnorm": "yes"}, r"config field 'batchnorm': expected true or false"),
        ({"learning_rate": 0.1}, r"unknown config field\(s\): learning_rate"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


def test_batch_of_one_is_allowed_without_batch_norm():
    assert TrainConfig(batchnorm=False, batch_size=1).batch_size == 1


def test_replace_validates():
    with pytest.raises(ValueError, match="'lr'"):
        TrainConfig().replace(lr=0.0)
    assert TrainConfig().replace(lr=0.5).lr == 0.5


def test_messages_show_numpy_values_as_plain_numbers():
    """The bug: 'lr' = np.float64(-1.0) in a message meant for a person."""
    with pytest.raises(ValueError) as raised:
        TrainConfig(lr=np.float64(-1.0))
    assert "config field 'lr' = -1.0 is invalid" in str(raised.value)
    with pytest.raises(ValueError) as raised:
        TrainConfig.from_dict({"epochs": np.float64(2.5)})
    assert str(raised.value) == "config field 'epochs': expected an integer, got 2.5"
    with pytest.raises(ValueError) as raised:
        TrainConfig(hidden=(np.int64(8), np.int64(0)))
    assert "'hidden' = (8, 0) is invalid" in str(raised.value)


# Moved from test_optim.py: the optimizer's hyperparameters are validated once, by TrainConfig.
@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("beta1", 1.0, r"\[0, 1\)"),
        ("beta2", -0.1, r"\[0, 1\)"),
        ("momentum", 1.5, r"\[0, 1\)"),
        ("rho", 1.0, r"\[0, 1\)"),
        ("adam_epsilon", 0.0, "> 0"),
    ],
)
def test_bad_hyperparameters_name_the_value_and_the_range(field, value, allowed):
    with pytest.raises(
        ValueError, match=rf"'{field}' = {value!r} is invalid: must be (in )?{allowed}"
    ):
        TrainConfig(optimizer="adam", **{field: value})


def test_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'lbfgs' is invalid.*adam"):
        TrainConfig(optimizer="lbfgs")


def test_the_optimizers_are_optims_update_functions():
    assert set(OPTIMIZERS) == set(optim.UPDATES)
    for name in OPTIMIZERS:  # every valid config has its update function
        settings = optimizer_settings(TrainConfig(optimizer=name, adam_epsilon=1e-7, rho=0.9))
        assert optim.UPDATES[settings.name] is getattr(optim, name)
        assert (settings.epsilon, settings.rho) == (1e-7, 0.9)
