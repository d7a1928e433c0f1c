"""Command-line flags built from TrainConfig's fields: names, types, choices, help and defaults.

`--FIELD-NAME` sets FIELD_NAME (a True-by-default bool gets `--no-FIELD-NAME`); every flag
defaults to None, meaning not given, and its help ends with the field's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

from bnserve.training.config import FIELD_TYPES, TrainConfig

CONFIG_FIELDS = {setting.name: setting for setting in dataclasses.fields(TrainConfig)}
# argparse converts a flag's text with the field's type; widths stay text ("64,64")
_PARSERS: dict[type, Any] = {int: int, float: float, str: str, tuple: str}


def flag_of(name: str) -> str:
    """The option that sets field `name`: --batch-size for batch_size."""
    return "--" + name.replace("_", "-")


def default_text(name: str) -> str:
    """A field's default as `--help` shows it: 256,256; 0.001; or what None means."""
    setting = CONFIG_FIELDS[name]
    default = setting.default
    if default is None:
        return str(setting.metadata["none"])
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default) or "none"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def add_config_flag(
    group: argparse._ActionsContainer, name: str, *, help_text: str | None = None
) -> None:
    """Add the flag of TrainConfig field `name` to `group` (a parser, group or exclusive group).

    help_text replaces the field's help where a command means something else by it (the tuner's
    per-trial --epochs); the default shown is still the field's unless help_text says one."""
    setting = CONFIG_FIELDS[name]
    kind, _ = FIELD_TYPES[name]
    meta = setting.metadata
    text = help_text or f"{meta['help']} (default: {default_text(name)})"
    if kind is bool and setting.default is False:
        group.add_argument(flag_of(name), dest=name, action="store_true", default=None, help=text)
        return
    if kind is bool:
        if setting.default is not True or meta["off"] is None:
            raise TypeError(f"{name}: only True-by-default booleans (with off=) have a --no- flag")
        text = help_text or f"{meta['off']} (default: {meta['help']})"
        group.add_argument(
            "--no-" + flag_of(name)[2:],
            dest=name,
            action="store_false",
            default=None,
            help=text,
        )
        return
    parse = _argparse_type(meta["parse"]) if meta["parse"] is not None else _PARSERS[kind]
    options: dict[str, Any] = {"type": parse, "default": None, "help": text}
    if meta["choices"] is not None:
        options["choices"] = list(meta["choices"])
    if meta["metavar"] is not None:
        options["metavar"] = meta["metavar"]
    group.add_argument(flag_of(name), **options)


@functools.cache  # one per field: train's and tune's flags share it
def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """parse, with its ValueError's words as argparse's one error line."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse_flag


def fields_in_group(group: str) -> Iterable[str]:
    """The TrainConfig fields of one --help section, in declaration order."""
    return [name for name, setting in CONFIG_FIELDS.items() if setting.metadata["group"] == group]
