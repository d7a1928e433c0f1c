"""`bnserve.schema`: the raw inputs a format-2 model takes (docs/contracts.md, "Graph inputs").

A model trained on a table with text columns or gaps scores raw records: one graph input per
used column (a "mixed" model: numeric float32 [N, 1] with NaN missing, categorical string [N, 1]
with "" or a missing token missing), or, for a table of numbers only, today's single `x`
float32 [N, F] with NaN missing. This module parses the JSON object the exporter writes and
answers what serving and drift ask of it (which cells are missing, which levels are unseen).
It imports only the standard library and numpy, like contract.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_FORMAT = 1  # "version" inside bnserve.schema
NUMERIC, CATEGORICAL, IGNORED = "numeric", "categorical", "ignored"
OTHER = "<other>"  # the slot of rare training levels and of levels never seen in training
MISSING = "<missing>"  # the slot of missing cells


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the training table as the training rows shaped it (schema.json's entry).

    numeric: `fill` replaces a missing value (the training mean), `indicator` adds a 0/1
    "was missing" input. categorical: `levels` are the kept levels (sorted) with their training
    counts; `rare` the levels rarer than --min-level-count, scored as `<other>` with every level
    never seen in training; `has_other` / `has_missing` say whether those slots exist (without
    `<other>` an unseen level adds nothing; without `<missing>` a missing cell goes to `<other>`
    or adds nothing). ignored: not a model input.
    """

    name: str
    kind: str  # NUMERIC | CATEGORICAL | IGNORED
    missing_count: int  # missing training cells
    fill: float | None = None
    indicator: bool = False
    levels: tuple[str, ...] = ()
    level_counts: tuple[int, ...] = ()
    rare: tuple[str, ...] = ()

    @property
    def has_other(self) -> bool:
        return bool(self.rare)

    @property
    def has_missing(self) -> bool:
        return self.kind == CATEGORICAL and self.missing_count > 0

    def slots(self) -> list[str]:
        """A categorical column's slots in input order: kept levels, `<other>`, `<missing>`."""
        if self.kind != CATEGORICAL:
            return []
        return [
            *self.levels,
            *([OTHER] if self.has_other else []),
            *([MISSING] if self.has_missing else []),
        ]

    def seen(self, cells: Iterable[str]) -> np.ndarray:
        """(n,) bool per present cell: the training rows had this level (kept or rare)."""
        known = set(self.levels) | set(self.rare)
        return np.array([cell in known for cell in cells], dtype=bool)

    @classmethod
    def from_json(cls, facts: Mapping[str, Any]) -> ColumnSpec:
        """From one entry of schema.json's "columns" (ValueError/KeyError/TypeError if bad)."""
        kind = str(facts["kind"])
        if kind not in (NUMERIC, CATEGORICAL, IGNORED):
            raise ValueError(f"column {facts.get('name')!r}: kind {kind!r}")
        fill = facts.get("fill")
        levels = [(str(item["value"]), int(item["count"])) for item in facts.get("levels", [])]
        return cls(
            name=str(facts["name"]),
            kind=kind,
            missing_count=int(facts["missing_count"]),
            fill=None if fill is None else float(fill),
            indicator=bool(facts.get("indicator", False)),
            levels=tuple(value for value, _ in levels),
            level_counts=tuple(count for _, count in levels),
            rare=tuple(str(item["value"]) for item in facts.get("rare", [])),
        )


@dataclass(frozen=True)
class GraphInput:
    """One input of the graph: a column ("numeric" float32 [N, 1] or "categorical" string
    [N, 1]), or a numbers-only model's `x` float32 [N, F] whose F columns are `columns`."""

    name: str
    kind: str  # NUMERIC | CATEGORICAL
    columns: tuple[str, ...]  # the table columns it carries: (name,) for a column input


@dataclass(frozen=True)
class InputSchema:
    """The parsed `bnserve.schema` of a format-2 model."""

    na_values: tuple[str, ...]  # every cell text that means missing ("" included)
    inputs: tuple[GraphInput, ...]  # the graph's inputs, in order
    columns: tuple[ColumnSpec, ...]  # every column of the training table, ignored ones too

    @property
    def mixed(self) -> bool:
        """One input per column (the table had a categorical column), not a single `x`."""
        return any(graph_input.kind == CATEGORICAL for graph_input in self.inputs)

    def column(self, name: str) -> ColumnSpec:
        """The column named `name` (KeyError if the table had none)."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def used_columns(self) -> tuple[ColumnSpec, ...]:
        """The columns the model reads, in table order (numeric and categorical)."""
        return tuple(column for column in self.columns if column.kind != IGNORED)

    def is_missing(self, cell: str) -> bool:
        """A categorical cell that means missing: "" or a missing token (exact match)."""
        return cell in self.na_values

    def unseen_count(self, name: str, cells: Iterable[str]) -> int:
        """Present cells of categorical column `name` whose level training never saw (each is
        scored as `<other>`, or adds nothing without it)."""
        column = self.column(name)
        present = [cell for cell in cells if not self.is_missing(cell)]
        return int(np.count_nonzero(~column.seen(present))) if present else 0

    @classmethod
    def from_json(cls, value: Any) -> InputSchema:
        """Parse the decoded `bnserve.schema` object; ValueError names what is wrong."""
        try:
            if not isinstance(value, dict) or value.get("version") != SCHEMA_FORMAT:
                raise ValueError(f"expected a JSON object with version {SCHEMA_FORMAT}")
            inputs = tuple(
                GraphInput(
                    name=str(item["name"]),
                    kind=str(item["kind"]),
                    columns=tuple(str(c) for c in item.get("columns", [item["name"]])),
                )
                for item in value["inputs"]
            )
            columns = tuple(ColumnSpec.from_json(item) for item in value["columns"])
            na_values = tuple(str(cell) for cell in value["na_values"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed ({type(error).__name__}: {error})") from None
        known = {column.name: column for column in columns}
        for graph_input in inputs:
            for name in graph_input.columns:
                if name not in known or known[name].kind == IGNORED:
                    raise ValueError(f"input {graph_input.name!r} names no used column {name!r}")
            if graph_input.kind not in (NUMERIC, CATEGORICAL):
                raise ValueError(f"input {graph_input.name!r}: kind {graph_input.kind!r}")
        return cls(na_values=na_values, inputs=inputs, columns=columns)
