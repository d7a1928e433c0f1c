"""Raw records for a model with per-column inputs (a table with text columns): `bnserve predict`
reads them from a CSV with a header or from --features, and sends each as PredictRequest.values.

The model's columns and their kinds come from ModelInfo.columns; its missing tokens from the
`bnserve.schema` entry of ModelInfo.metadata. A numeric cell that is empty or a missing token is
sent as missing, any other non-number is refused naming the line and column; a categorical cell
is sent as its text (the model file maps missing tokens and unseen levels itself). Columns of the
CSV that are no model input (the target, an id, a column left out at training) are ignored.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bnserve.header_hints import delimiter_hint
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb

MISSING_TOKENS = ("", "NA", "NaN", "nan", "null", "NULL", "None")  # training's default tokens


class RecordError(ValueError):
    """A record that cannot be sent; the message names the file (or flag), line and column."""


@dataclass(frozen=True)
class Records:
    """Rows of values by column, with their CSV line numbers, and the CSV columns ignored."""

    lines: list[int]
    values: list[dict[str, pb.Value]]
    ignored: list[str]


def missing_tokens(info: pb.ModelInfoResponse) -> frozenset[str]:
    """The cells a numeric column reads as missing: the defaults and the model's na_values."""
    tokens = set(MISSING_TOKENS)
    schema = info.metadata.get("bnserve.schema", "")
    with contextlib.suppress(ValueError, AttributeError):
        tokens.update(str(token) for token in json.loads(schema).get("na_values", []))
    return frozenset(tokens)


def cell_value(column: pb.InputColumn, text: str, tokens: frozenset[str], where: str) -> pb.Value:
    """One cell as a Value of its column's kind."""
    cell = text.strip()
    if column.kind == "categorical":
        return pb.Value(text=cell)
    if cell in tokens:
        return pb.Value(missing=True)
    try:
        number = float(cell)
    except ValueError:
        raise RecordError(
            f"{where}: {cell!r} is not a number and {column.name!r} is a numeric column (leave "
            "the cell empty, or NA, for a missing value)"
        ) from None
    if math.isinf(number):
        raise RecordError(f"{where}: {cell!r} is not a finite number")
    return pb.Value(number=number)


def read_records(path: Path, info: pb.ModelInfoResponse, delimiter: str = ",") -> Records:
    """Every row of a CSV with a header naming (at least) the model's columns."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle, delimiter=delimiter))
    except OSError as error:
        raise RecordError(f"{path}: cannot read it ({error.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: not a readable CSV ({error})") from None
    if not lines:
        raise RecordError(f"{path}: empty file, no records")
    header = [cell.strip() for cell in lines[0]]
    if hint := delimiter_hint(header, delimiter):
        raise RecordError(f"{path}: line 1: {hint}")
    columns = list(info.columns)
    missing = [column.name for column in columns if column.name not in header]
    if missing:
        raise RecordError(
            f"{path}: line 1: the header lacks the model's column(s) {missing[:6]}"
            f"{' …' if len(missing) > 6 else ''}; the model takes "
            f"{[column.name for column in columns][:8]} (a CSV for it needs a header)"
        )
    wanted = {column.name for column in columns}
    ignored = [name for name in header if name not in wanted]
    positions = [(column, header.index(column.name)) for column in columns]
    tokens = missing_tokens(info)
    records = Records([], [], ignored)
    for line, cells in enumerate(lines[1:], start=2):
        if not cells or all(not cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise RecordError(f"{path}: line {line}: {len(cells)} columns, expected {len(header)}")
        records.lines.append(line)
        records.values.append(
            {
                column.name: cell_value(
                    column, cells[index], tokens, f"{path}: line {line}, column {column.name!r}"
                )
                for column, index in positions
            }
        )
    if not records.values:
        raise RecordError(f"{path}: no record rows")
    return records


def parse_record(text: str, info: pb.ModelInfoResponse) -> dict[str, pb.Value]:
    """--features for a model with per-column inputs: `name=value,…` naming every column, or
    the values in ModelInfo.columns order (an empty value: missing)."""
    items = [item.strip() for item in text.split(",")]
    columns: Sequence[pb.InputColumn] = list(info.columns)
    by_name = {column.name: column for column in columns}
    tokens = missing_tokens(info)
    if all("=" in item for item in items):
        values = {}
        for position, item in enumerate(items, start=1):
            name, _, cell = item.partition("=")
            name = name.strip()
            if name not in by_name:
                raise RecordError(
                    f"--features item {position}: {name!r} is not a model column "
                    f"({', '.join(by_name)})"
                )
            values[name] = cell_value(by_name[name], cell, tokens, f"--features {name!r}")
        absent = [name for name in by_name if name not in values]
        if absent:
            raise RecordError(f"--features: no value for column(s) {absent} (empty: missing)")
        return values
    if len(items) != len(columns):
        raise RecordError(
            f"--features: {len(items)} values but the model takes {len(columns)} columns "
            f"({', '.join(by_name)}); or give name=value pairs"
        )
    return {
        column.name: cell_value(column, cell, tokens, f"--features {column.name!r}")
        for column, cell in zip(columns, items, strict=True)
    }
