"""training/data/header_hints.py and the client's copy (server/clients/header_hints.py) say the
same: the serving image has no training code, so the client cannot import the original."""

from __future__ import annotations

import pytest

from bnserve.server.clients import header_hints as client
from bnserve.training.data import header_hints as training

HEADERS = [["a;b;c"], ["a\tb"], ["a|b"], ["a,b"], ["abc"], ["a", "b;c"], ["a;b\tc"]]


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_both_hint_the_same(header: list[str], delimiter: str) -> None:
    assert client.delimiter_hint(header, delimiter) == training.delimiter_hint(header, delimiter)


@pytest.mark.parametrize("text", [",", ";", "\\t", "tab", "|", "", ";;", "\n", '"'])
def test_both_parse_delimiters_the_same(text: str) -> None:
    said = []
    for module in (client, training):
        try:
            said.append(module.parse_delimiter(text))
        except ValueError as error:
            said.append(f"ValueError: {error}")
    assert said[0] == said[1]
    assert said[0] == {",": ",", ";": ";", "\\t": "\t", "tab": "\t", "|": "|"}.get(
        text, f"ValueError: --delimiter {text!r}: expected one character, such as ';' or '\\t'"
    )


def test_the_hint_names_the_delimiter_and_the_flag() -> None:
    assert training.delimiter_hint(["a;b"]) == (
        "the header has one column containing ';' — is the file separated by ';'? (--delimiter ';')"
    )
    assert training.delimiter_hint(["a;b"], ";") is None
