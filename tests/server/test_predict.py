"""`bnserve predict` input parsing: features, CSV with and without header, errors with places."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnserve.server.clients.predict import (
    InputError,
    main,
    parse_features,
    read_examples,
    write_table,
)

NAMES = ["a", "b", "c"]


def test_parse_features_by_position_and_name() -> None:
    assert list(parse_features("1, 2.5,-3e1").features) == [1.0, 2.5, -30.0]
    assert dict(parse_features("b=2,a=1").named_features) == {"a": 1.0, "b": 2.0}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1,,3", "none empty"),
        ("1,x,3", "item 2: 'x' is not a number"),
        ("1,nan", "item 2: 'nan' is not a finite number"),
        ("a=1,=2", "item 2 '=2': expected name=value"),
        ("a=1,b=oops", "item 2 (b): 'oops' is not a number"),
    ],
)
def test_parse_features_errors(text: str, problem: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_features(text)
    assert problem in str(raised.value)


def test_csv_with_header_picks_columns_by_name(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("c,label,a,b\n3,0,1,2\n\n6,1,4,5\n")
    assert read_examples(path, NAMES) == ([2, 4], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_csv_without_header_is_positional(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("1,2,3\n4,5,6\n")
    assert read_examples(path, NAMES) == ([1, 2], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "empty file"),
        ("a,b\n1,2\n", "line 1: header lacks the model's feature column(s) ['c']"),
        ("a,b,c\n1,2\n", "line 2: 2 columns, expected 3"),
        ("a,b,c\n1,2,3\n1,two,3\n", "line 3, column 2 ('b'): 'two' is not a number"),
        ("a,b,c\n", "no example rows"),
    ],
)
def test_csv_errors_name_the_place(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError) as raised:
        read_examples(path, NAMES)
    assert str(path) in str(raised.value) and problem in str(raised.value)


class _Unwritable:
    def __str__(self) -> str:
        raise RuntimeError("cannot be written")


def test_write_table_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    write_table([["line", "y"], ["2", "1.5"]], out)
    assert out.read_text() == "line,y\n2,1.5\n"
    with pytest.raises(RuntimeError):
        write_table([["line"], [_Unwritable()]], out)  # fails midway: the old file stays whole
    assert out.read_text() == "line,y\n2,1.5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


@pytest.mark.parametrize(
    ("content", "columns"),
    [
        ("7,1,2,3\n8,4,5,6\n", 4),  # an id column first: was scored shifted by one, exit 0
        ("1,2\n4,5\n", 2),  # one short: was an IndexError traceback
    ],
)
def test_headerless_csv_must_have_exactly_the_model_features(
    tmp_path: Path, content: str, columns: int
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(content)
    with pytest.raises(InputError) as raised:
        read_examples(path, NAMES)
    message = str(raised.value)
    assert f"line 1: {columns} columns but the model takes 3 features" in message
    assert str(path) in message


def test_csv_with_header_still_ignores_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("id,a,b,c\n7,1,2,3\n")
    assert read_examples(path, NAMES) == ([2], [[1.0, 2.0, 3.0]])


def test_a_byte_order_mark_is_skipped_as_by_every_reader(tmp_path: Path) -> None:
    """The bug: predict --csv said the header lacked 'a', which the user could see in the file
    (a UTF-8 BOM glued to it); train and drift read the same file."""
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,c\n1,2,3\n")
    assert read_examples(path, NAMES) == ([2], [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(("delimiter", "shown"), [(";", "';'"), ("\t", "'\\t'"), ("|", "'|'")])
def test_a_one_column_header_holding_a_delimiter_says_which(
    tmp_path: Path, delimiter: str, shown: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(f"a{delimiter}b{delimiter}c\n1{delimiter}2{delimiter}3\n")
    with pytest.raises(InputError) as raised:
        read_examples(path, NAMES)
    assert str(raised.value) == (
        f"{path}: line 1: the header has one column containing {shown} — is the file separated "
        f"by {shown}? (--delimiter {shown})"
    )
    assert read_examples(path, NAMES, delimiter) == ([2], [[1.0, 2.0, 3.0]])


def test_a_bad_delimiter_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--target", "127.0.0.1:1", "--csv", "x.csv", "--delimiter", ";;"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "bnserve predict: error: --delimiter ';;': expected one character, such as ';' or '\\t'\n"
    )
