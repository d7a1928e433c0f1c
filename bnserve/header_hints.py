"""What a reader says about a header that does not fit: the delimiter it most likely uses, the
names closest to one that is not there, and long name lists cut short.

Training's readers, the client (server/clients/predict.py) and `bnserve drift` say it in the same
words: a module of the `bnserve` package itself, below training and server, so it imports only
the standard library (the serving image carries it, and no training code)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

DELIMITERS = (";", "\t", "|")  # what else a "CSV" is separated by, most common first
SHOWN_NAMES = 6  # a list of names longer than this is cut: first few, then the count


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


def names_list(names: Sequence[str]) -> str:
    """['a', 'b', …] (64): at most SHOWN_NAMES names, then how many there are."""
    if len(names) <= SHOWN_NAMES:
        return repr(list(names))
    shown = ", ".join(repr(name) for name in names[:SHOWN_NAMES])
    return f"[{shown}, …] ({len(names)})"


def closest(name: str, names: Sequence[str]) -> str:
    """(did you mean 'digit'?) for the nearest names, or the shortened list of all."""
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not near and name.lower() in (lowered := {other.lower(): other for other in names}):
        near = [lowered[name.lower()]]
    if near:
        return f"did you mean {' or '.join(repr(other) for other in near)}?"
    return f"the columns are {names_list(names)}"
