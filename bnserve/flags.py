"""Command-line flags from the fields of a frozen settings dataclass.

One generator for `bnserve serve` (server/settings.py's ServerSettings) and `bnserve train` /
`bnserve tune` (training/config.py's TrainConfig): field `batch_size` is flag `--batch-size`, its
type is the flag's type, and its metadata says the rest:

    help     what the flag does (required); for a --no- flag, what the field on means
    off      what a --no- flag does (a True-by-default bool of a "negative" command)
    choices  the allowed values (optional)
    metavar  the value's name in --help (optional)
    parse    turns the flag's text into the value, ValueError for a bad one (optional)

Every flag defaults to None, meaning "not given", so a command can tell a flag from a default and
layer flags over environment variables or a stored config. A module of the `bnserve` package
itself, below training, export and server: it imports only the standard library.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

# argparse's `type=` per field kind; a tuple's text stays text ("64,64") for the caller to split
_PARSERS: dict[type, type] = {int: int, float: float, str: str, tuple: str}


class FieldType(NamedTuple):
    """A field's value type as a flag needs it."""

    kind: type  # int, float, str, bool or tuple
    nullable: bool  # `X | None`: None is a value of the field


def field_types(settings_class: type) -> dict[str, FieldType]:
    """Each field's FieldType, read from the class's annotations (strings included)."""
    kinds = {}
    for name, hint in typing.get_type_hints(settings_class).items():
        members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kind = next(member for member in members if member is not type(None))
        kinds[name] = FieldType(typing.get_origin(kind) or kind, type(None) in members)
    return kinds


def flag_of(name: str) -> str:
    """The option that sets field `name`: --batch-size for batch_size."""
    return "--" + name.replace("_", "-")


def shown_default(default: object) -> str:
    """A default as --help shows it: 256,256 for a tuple; 0.001; on/off for a bool; "" for an
    empty text or tuple (its help says what empty means)."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default)
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def add_field_flag(
    container: argparse._ActionsContainer,
    setting: dataclasses.Field[Any],
    field_type: FieldType,
    *,
    shown: str,
    booleans: Literal["pair", "negative"],
    sequences: Literal["repeated", "text"],
    help_text: str | None = None,
) -> None:
    """Add the flag of `setting` to `container` (a parser, an argument group or an exclusive one).

    shown: the default as the help ends it, " (default: SHOWN)" (nothing when empty).
    booleans: "pair" gives --NAME and --no-NAME; "negative" only --no-NAME for a True-by-default
    field with an `off` text (else TypeError), its help "OFF (default: HELP)", and only --NAME for
    a False-by-default one. sequences: a tuple
    field's flag is "repeated" (--model A --model B: a list of texts) or one comma-separated
    "text" (--hidden 64,32). help_text replaces the whole help where a command means something
    else by the field (the tuner's per-trial --epochs)."""
    meta = setting.metadata
    text = help_text or help_line(meta["help"], shown)
    flag = flag_of(setting.name)
    if field_type.kind is bool and booleans == "pair":
        container.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    if field_type.kind is bool and setting.default is False:  # "negative": --NAME turns it on
        container.add_argument(
            flag, dest=setting.name, action="store_true", default=None, help=text
        )
        return
    if field_type.kind is bool:
        if setting.default is not True or meta.get("off") is None:
            raise TypeError(
                f"{setting.name}: only True-by-default booleans (with off=) have a --no- flag"
            )
        container.add_argument(
            "--no-" + flag[2:],
            dest=setting.name,
            action="store_false",
            default=None,
            help=help_text or help_line(meta["off"], meta["help"]),
        )
        return
    options: dict[str, Any] = {"default": None, "help": text}
    if meta.get("metavar") is not None:
        options["metavar"] = meta["metavar"]
    if field_type.kind is tuple and sequences == "repeated":
        container.add_argument(flag, action="append", **options)
        return
    parse = meta.get("parse")
    options["type"] = _PARSERS[field_type.kind] if parse is None else _argparse_type(parse)
    if meta.get("choices") is not None:
        options["choices"] = list(meta["choices"])
    container.add_argument(flag, **options)


def help_line(help_text: str, shown: str) -> str:
    """One flag's help: the text without a final period, then " (default: SHOWN)" unless empty."""
    return help_text.rstrip(".") + (f" (default: {shown})" if shown else "")


@functools.cache  # one wrapper per parse function: train's and tune's flags share it
def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """parse, with its ValueError's words as argparse's one error line."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse_flag
