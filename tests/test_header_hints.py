"""bnserve/header_hints.py: one module says it for training's readers, the client and drift (the
client used to carry a copy, the serving image having no training code)."""

from __future__ import annotations

import pytest

from bnserve import header_hints
from bnserve.server.clients import predict
from bnserve.server.drift import cli as drift_cli
from bnserve.training import config
from bnserve.training.data import readers


def test_every_reader_uses_the_one_module() -> None:
    assert predict.delimiter_hint is readers.delimiter_hint is header_hints.delimiter_hint
    assert drift_cli.delimiter_hint is header_hints.delimiter_hint
    assert predict.parse_delimiter is config.parse_delimiter is header_hints.parse_delimiter
    assert drift_cli.parse_delimiter is header_hints.parse_delimiter


@pytest.mark.parametrize("text", [",", ";", "\\t", "tab", "|", "", ";;", "\n", '"'])
def test_delimiters_parse_to_one_character_or_one_error(text: str) -> None:
    try:
        said = header_hints.parse_delimiter(text)
    except ValueError as error:
        said = f"ValueError: {error}"
    assert said == {",": ",", ";": ";", "\\t": "\t", "tab": "\t", "|": "|"}.get(
        text, f"ValueError: --delimiter {text!r}: expected one character, such as ';' or '\\t'"
    )


def test_the_hint_names_the_delimiter_and_the_flag() -> None:
    assert header_hints.delimiter_hint(["a;b"]) == (
        "the header has one column containing ';' — is the file separated by ';'? (--delimiter ';')"
    )
    assert header_hints.delimiter_hint(["a;b"], ";") is None
