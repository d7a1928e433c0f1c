"""`bnserve train`'s and `bnserve tune`'s flags for TrainConfig's fields (bnserve/flags.py).

`--FIELD-NAME` sets FIELD_NAME (a True-by-default bool gets only `--no-FIELD-NAME`; `--hidden` takes
one comma-separated text); every flag defaults to None, meaning not given, and its help ends with
the field's default, or with what a None default means (the field's `none=`).
"""

from __future__ import annotations

import argparse
import dataclasses

from bnserve.flags import add_field_flag, shown_default
from bnserve.training.config import FIELD_TYPES, TrainConfig

CONFIG_FIELDS = {setting.name: setting for setting in dataclasses.fields(TrainConfig)}


def default_text(name: str) -> str:
    """A field's default as `--help` shows it: 256,256; 0.001; none for an empty tuple; or what
    None means."""
    setting = CONFIG_FIELDS[name]
    if setting.default is None:
        return str(setting.metadata["none"])
    return shown_default(setting.default) or "none"


def add_config_flag(
    group: argparse._ActionsContainer, name: str, *, help_text: str | None = None
) -> None:
    """Add the flag of TrainConfig field `name` to `group` (a parser, group or exclusive group).

    help_text replaces the field's help where a command means something else by it (the tuner's
    per-trial --epochs); the default shown is still the field's unless help_text says one."""
    add_field_flag(
        group,
        CONFIG_FIELDS[name],
        FIELD_TYPES[name],
        shown=default_text(name),
        booleans="negative",
        sequences="text",
        help_text=help_text,
    )
