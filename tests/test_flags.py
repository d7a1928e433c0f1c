"""bnserve/flags.py: one flag per dataclass field, for serve's settings and train's config."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from bnserve.flags import (
    FieldType,
    add_field_flag,
    field_types,
    flag_of,
    help_line,
    shown_default,
)


def _setting(default: object, help_text: str, **meta: object) -> object:
    return field(default=default, metadata={"help": help_text, **meta})


@dataclass(frozen=True)
class Example:
    batch_size: int = _setting(64, "rows per batch")
    lr: float = _setting(1e-3, "step size")
    mode: str = _setting("fast", "how", choices=("fast", "slow"), metavar="MODE")
    patience: int | None = _setting(None, "epochs to wait")
    hidden: tuple[int, ...] = _setting((8, 4), "widths")
    health: bool = _setting(True, "serve health", off="no health service")
    delimiter: str = _setting(",", "field separator", parse=lambda text: text.replace("tab", "\t"))


def _parser(booleans, sequences) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="example")
    kinds = field_types(Example)
    for setting in dataclasses.fields(Example):
        shown = shown_default(setting.default)
        kind = kinds[setting.name]
        add_field_flag(parser, setting, kind, shown=shown, booleans=booleans, sequences=sequences)
    return parser


def test_field_types_read_string_annotations_and_optionals():
    kinds = field_types(Example)
    assert kinds["batch_size"] == FieldType(int, False)
    assert kinds["patience"] == FieldType(int, True)
    assert kinds["hidden"] == FieldType(tuple, False)
    assert kinds["health"].kind is bool


def test_names_and_shown_defaults():
    assert flag_of("batch_size") == "--batch-size"
    assert [shown_default(value) for value in ((256, 256), 1e-5, 0.001, True, False, "x", 3)] == [
        "256,256", "1e-05", "0.001", "on", "off", "x", "3",
    ]  # fmt: skip


def test_every_flag_defaults_to_none_and_parses_to_the_fields_type():
    parser = _parser("negative", "text")
    assert vars(parser.parse_args([])) == dict.fromkeys(
        ["batch_size", "lr", "mode", "patience", "hidden", "health", "delimiter"]
    )
    args = parser.parse_args(
        ["--batch-size", "32", "--lr", "0.1", "--mode", "slow", "--hidden", "6,3", "--no-health"]
    )
    assert (args.batch_size, args.lr, args.mode, args.hidden, args.health) == (
        32, 0.1, "slow", "6,3", False,
    )  # fmt: skip
    assert parser.parse_args(["--delimiter", "tab"]).delimiter == "\t"  # the field's parse
    help_text = " ".join(parser.format_help().split())
    assert "--mode MODE" in help_text and "rows per batch (default: 64)" in help_text
    assert "--no-health no health service (default: serve health)" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])  # choices come from the metadata


def test_the_serve_style_pairs_booleans_and_repeats_sequences():
    parser = _parser("pair", "repeated")
    args = parser.parse_args(["--no-health", "--hidden", "a", "--hidden", "b"])
    assert (args.health, args.hidden) == (False, ["a", "b"])
    assert parser.parse_args(["--health"]).health is True


def test_a_negative_command_gives_no_flags_to_true_and_plain_flags_to_false_booleans():
    @dataclass(frozen=True)
    class Switches:
        verbose: bool = _setting(False, "talk")
        quiet: bool = _setting(True, "stay quiet")  # no off= text: no --no-quiet to explain

    verbose, quiet = dataclasses.fields(Switches)
    parser = argparse.ArgumentParser()
    kind = FieldType(bool, False)
    add_field_flag(parser, verbose, kind, shown="off", booleans="negative", sequences="text")
    assert parser.parse_args(["--verbose"]).verbose is True
    assert parser.parse_args([]).verbose is None
    with pytest.raises(TypeError, match="True-by-default"):
        add_field_flag(parser, quiet, kind, shown="on", booleans="negative", sequences="text")


def test_help_text_replaces_the_whole_help():
    parser = argparse.ArgumentParser()
    setting = dataclasses.fields(Example)[0]
    add_field_flag(
        parser,
        setting,
        FieldType(int, False),
        shown="64",
        booleans="pair",
        sequences="text",
        help_text="per trial (default 200)",
    )
    assert parser._actions[-1].help == "per trial (default 200)"


def test_help_lines_drop_a_final_period_and_an_empty_default():
    assert help_line("Port to listen on.", "50051") == "Port to listen on (default: 50051)"
    assert (
        help_line("Model name; empty: the file's stem.", "") == "Model name; empty: the file's stem"
    )
    assert shown_default("") == "" and shown_default(()) == ""
