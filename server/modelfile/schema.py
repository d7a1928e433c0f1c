"""`bnserve.schema`: the graph inputs of a format-2 model file and the columns behind them.

A format-2 model (docs/contracts.md "The ONNX model") carries the schema of its training table:

- a **mixed** model (at least one categorical column) has one graph input per used column, named
  after it: numeric columns `tensor(float)` [N, 1] (NaN: missing), categorical columns
  `tensor(string)` [N, 1] (the empty string and the run's missing tokens: missing);
- a **numbers-only** model keeps the one input `x` float32 [N, F] of the used numeric columns
  (NaN: missing, filled inside the graph).

The server reads it to check the graph's inputs, decode requests column by column, and count
unseen levels and missing cells per column (a level is seen when it is a kept or a rare level of
the training split; anything else that is not missing is unseen). Imports only the standard
library, like the rest of modelfile/.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1  # the "version" inside bnserve.schema
NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)


class SchemaError(ValueError):
    """bnserve.schema is malformed; the message says what (the caller adds the file)."""


@dataclass(frozen=True)
class ColumnInput:
    """One graph input of a format-2 model.

    name: the graph input (a column's name, or "x" for a numbers-only model); kind: numeric |
    categorical; columns: for "x", the used numeric columns it holds, in order (else (name,)).
    levels: categorical: the kept levels, sorted (each has its own one-hot input); rare: the
    levels that share `<other>`; has_other / has_missing: the column has an `<other>` /
    `<missing>` input. seen: the strings that are not unseen (kept and rare levels, missing
    tokens, the empty string).
    """

    name: str
    kind: str
    columns: tuple[str, ...]
    levels: tuple[str, ...] = ()
    rare: tuple[str, ...] = ()
    has_other: bool = False
    has_missing: bool = False
    seen: frozenset[str] = frozenset()

    @property
    def is_categorical(self) -> bool:
        return self.kind == CATEGORICAL


@dataclass(frozen=True)
class InputSchema:
    """bnserve.schema parsed: the graph inputs in order, the missing tokens, every column.

    mixed: one input per column (some categorical); else the single input "x" [N, F].
    ignored: the table's columns that are no model input (left out at training).
    """

    inputs: tuple[ColumnInput, ...]
    na_values: frozenset[str]
    ignored: tuple[str, ...]

    @property
    def mixed(self) -> bool:
        return any(column.is_categorical for column in self.inputs)

    @property
    def names(self) -> tuple[str, ...]:
        """The graph input names, in order."""
        return tuple(column.name for column in self.inputs)

    def is_missing(self, text: str) -> bool:
        """A categorical cell that means missing: empty, or one of the run's missing tokens."""
        return text == "" or text in self.na_values


def parse_schema(text: str) -> InputSchema:
    """Parse bnserve.schema (JSON); raises SchemaError naming the problem."""
    try:
        facts = json.loads(text)
    except json.JSONDecodeError as error:
        raise SchemaError(f"is not valid JSON ({error})") from None
    if not isinstance(facts, dict):
        raise SchemaError("is not a JSON object")
    if facts.get("version") != SCHEMA_VERSION:
        raise SchemaError(
            f"has version {facts.get('version')!r}; this server reads {SCHEMA_VERSION}"
        )
    na_values = facts.get("na_values", [])
    if not isinstance(na_values, list) or not all(isinstance(v, str) for v in na_values):
        raise SchemaError('"na_values" is not a list of strings')
    columns = facts.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        raise SchemaError('"columns" is not a list of objects')
    by_name: dict[str, Mapping[str, Any]] = {}
    for column in columns:
        if not isinstance(column.get("name"), str) or column.get("kind") not in (*KINDS, "ignored"):
            raise SchemaError(f'column {column.get("name")!r}: needs a "name" and a "kind"')
        by_name[column["name"]] = column
    inputs = facts.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise SchemaError('"inputs" is not a non-empty list')
    tokens = frozenset(na_values)
    parsed = tuple(_input(entry, by_name, tokens) for entry in inputs)
    names = [column.name for column in parsed]
    if len(set(names)) != len(names):
        raise SchemaError('"inputs" names an input twice')
    ignored = tuple(c["name"] for c in columns if c["kind"] == "ignored")
    return InputSchema(parsed, tokens, ignored)


def _input(
    entry: Any, by_name: Mapping[str, Mapping[str, Any]], tokens: frozenset[str]
) -> ColumnInput:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise SchemaError(f'an entry of "inputs" is not an object with a "name": {entry!r}')
    name, kind = entry["name"], entry.get("kind")
    if kind not in KINDS:
        raise SchemaError(f"input {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    held = entry.get("columns")
    if held is not None:  # the single "x" of a numbers-only model
        if (
            kind != NUMERIC
            or not isinstance(held, list)
            or not all(isinstance(c, str) for c in held)
        ):
            raise SchemaError(f'input {name!r}: "columns" must list numeric column names')
        return ColumnInput(name, kind, tuple(held))
    column = by_name.get(name)
    if column is None or column["kind"] != kind:
        raise SchemaError(f'input {name!r}: no {kind} column of that name in "columns"')
    if kind == NUMERIC:
        return ColumnInput(name, kind, (name,))
    levels = tuple(str(level["value"]) for level in column.get("levels", []))
    rare = tuple(str(level["value"]) for level in column.get("rare", []))
    return ColumnInput(
        name,
        kind,
        (name,),
        levels=levels,
        rare=rare,
        has_other=bool(rare),
        has_missing=int(column.get("missing_count", 0)) > 0,
        seen=frozenset((*levels, *rare, *tokens, "")),
    )
