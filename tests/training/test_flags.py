"""training/flags.py (over bnserve/flags.py): `bnserve train`'s and `bnserve tune`'s config flags
come from TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses

from bnserve.flags import flag_of
from bnserve.training.cli import build_parser
from bnserve.training.config import RESUMABLE_FIELDS, TrainConfig
from bnserve.training.flags import CONFIG_FIELDS, default_text
from bnserve.training.tune.cli import build_parser as build_tune_parser

# The command line users type (before the flags were built from the fields): it must not change
# (--delimiter came later, issue 30).
TRAIN_FLAGS = {
    "--out", "--resume", "--from-epoch", "--data", "--target", "--delimiter", "--task",
    "--dev-fraction",
    "--test-fraction", "--folds", "--fold", "--fold-repeat", "--class-weight", "--metric",
    "--cache-dir",
    "--hidden", "--activation", "--no-batchnorm", "--dropout", "--bn-momentum", "--bn-decay",
    "--bn-epsilon", "--running-var", "--stats", "--optimizer", "--lr", "--beta1", "--beta2",
    "--adam-epsilon", "--momentum", "--rho", "--lr-decay", "--l2", "--batch-size", "--epochs",
    "--early-stopping", "--min-delta", "--average-epochs", "--seed", "--split-seed",
    "--no-progress", "--no-checkpoints", "--no-plot", "--blas-threads", "-h", "--help",
    # issue 26: the columns of a mixed table
    "--categorical", "--numeric", "--ignore", "--na-values", "--min-level-count", "--max-levels",
    "--drop-missing-target", "--describe",
    # issue 29: the training recipes
    "--weight-decay", "--label-smoothing", "--lr-schedule", "--warmup-epochs", "--target-transform",
    "--input-scaling",
}  # fmt: skip


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def test_the_train_flags_are_the_same_as_before():
    assert set(_actions(build_parser())) == TRAIN_FLAGS


def test_each_field_flag_has_the_fields_choices_default_and_type():
    actions = _actions(build_parser())
    defaults = TrainConfig()
    for name, setting in CONFIG_FIELDS.items():
        action = actions["--no-batchnorm" if name == "batchnorm" else flag_of(name)]
        assert action.dest == name and action.default is None  # None: not given
        choices = setting.metadata["choices"]
        assert action.choices == (None if choices is None else list(choices))
        if name == "batchnorm":  # --no-batchnorm: what off does, then what the default is
            meta = setting.metadata
            assert action.help == f"{meta['off']} (default: {meta['help']})"
        else:
            assert action.help and action.help.endswith(f"(default: {default_text(name)})")
        given = getattr(defaults, name)
        if isinstance(given, float) and not isinstance(given, bool):
            assert action.type is float, name
        elif isinstance(given, int) and not isinstance(given, bool):
            assert action.type is int, name


def test_default_texts_show_the_fields_defaults():
    assert default_text("hidden") == "256,256"
    assert default_text("lr") == "0.001" and default_text("bn_epsilon") == "1e-05"
    assert default_text("batchnorm") == "on"
    assert default_text("split_seed") == "the same as --seed"


def test_parsed_flags_become_the_fields_values():
    args = build_parser().parse_args(
        ["--out", "x", "--no-batchnorm", "--hidden", "64,32", "--early-stopping", "3",
         "--task", "regression", "--lr", "0.01"]
    )  # fmt: skip
    values = {
        name: getattr(args, name) for name in CONFIG_FIELDS if getattr(args, name) is not None
    }
    config = TrainConfig.from_dict(values)
    assert (config.batchnorm, config.hidden, config.early_stopping) == (False, (64, 32), 3)
    assert (config.task, config.lr) == ("regression", 0.01)


def test_resumable_fields_come_from_the_field_metadata_and_reach_the_help():
    marked = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"]]
    assert list(RESUMABLE_FIELDS) == marked
    assert {"lr", "epochs", "early_stopping"} <= set(marked) and "hidden" not in marked
    epilog = " ".join((build_parser().epilog or "").split())
    assert ", ".join(flag_of(name) for name in marked) + " given with it" in epilog


def test_the_tuner_shares_the_training_flags():
    train, tune = _actions(build_parser()), _actions(build_tune_parser())
    for flag in (
        "--data",
        "--target",
        "--delimiter",
        "--task",
        "--class-weight",
        "--metric",
        "--epochs",
    ):
        assert tune[flag].choices == train[flag].choices and tune[flag].type is train[flag].type
    for flag in ("--data", "--target", "--delimiter", "--task", "--class-weight"):
        assert tune[flag].help == train[flag].help
    assert tune["--epochs"].type is int and "(default: 200)" in (tune["--epochs"].help or "")
