"""The client's copy of training/data/header_hints.py's delimiter hint and --delimiter parsing: the
serving image carries no training code, so the words are copied, and
tests/test_header_hints.py checks that both say the same."""

from __future__ import annotations

from collections.abc import Sequence

DELIMITERS = (";", "\t", "|")  # what else a "CSV" is separated by, most common first


def delimiter_hint(header: Sequence[str], delimiter: str = ",") -> str | None:
    """For a header of one column that holds another delimiter: what to pass instead."""
    if len(header) != 1:
        return None
    for candidate in DELIMITERS:
        if candidate != delimiter and candidate in header[0]:
            shown = "'\\t'" if candidate == "\t" else f"'{candidate}'"
            return (
                f"the header has one column containing {shown} — is the file separated by "
                f"{shown}? (--delimiter {shown})"
            )
    return None


def parse_delimiter(text: str) -> str:
    """--delimiter's value: one character; `\\t` or `tab` is a tab. ValueError otherwise."""
    delimiter = "\t" if text in ("\\t", "tab") else text
    if len(delimiter) != 1 or delimiter in '\r\n"':
        raise ValueError(f"--delimiter {text!r}: expected one character, such as ';' or '\\t'")
    return delimiter
