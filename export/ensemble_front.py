"""One front for the members of an ensemble of raw-column runs: their first layers as ONE
ColumnFront over a merged schema (docs/export.md, "Ensembles").

Each member m has its own schema (fills and kept levels from its own training rows) and its
own folded first layer z_m = d_m @ W_m + b_m over its design inputs d_m. The members share the
graph inputs, so every member's z_m can be written over ONE set of design inputs, the merged
schema's, with the members' columns side by side (W [D, Σ H_m]):

- a numeric column: the value v (filled with the common centre c, the first member's fill)
  and an indicator i = "was missing" when needed. Member m fills a gap with f_m (0 where it
  had no fill) and adds its own indicator row: its z gains f_m·W_m[v] + W_m[i_m]; filled with
  c it gains c·W_m[v], so the merged indicator row is (f_m − c)·W_m[v] + W_m[i_m];
- a categorical column: the union of the members' kept levels, then `<other>` and `<missing>`;
  member m's row of a level it kept is its own, of any other level (rare for it, or unseen)
  its default (its `<other>` row, or zero), of `<missing>` its missing row.

So the ensemble's front costs what one member's does (one LabelEncoder per column over the
union of levels, one Gather, one Gemm), whatever k. The exporter checks the result against the
members' numpy paths on raw records like every graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bnserve.export.columns import ColumnFront, design_offsets, missing_tokens
from bnserve.export.errors import ExportError
from bnserve.export.fold import AffineLayer
from bnserve.training.data.schema import ColumnSchema, TableSchema

MERGED_OTHER = ("<members' other>", 1)  # a stand-in rare level: the merged column has `<other>`


def merged_front(
    schemas: Sequence[TableSchema], first_layers: Sequence[AffineLayer]
) -> tuple[ColumnFront, AffineLayer]:
    """The ColumnFront of the merged schema and the first layer over its design inputs
    (D, Σ H_m), member m's columns at its place; ExportError when the members read a missing
    cell differently (their missing tokens differ)."""
    tokens = {missing_tokens(schema) for schema in schemas}
    if len(tokens) > 1:
        raise ExportError(
            "the members' missing tokens (--na-values) differ; ensemble members must share them"
        )
    placed = [dict((c.name, (c, offset)) for c, offset in design_offsets(s)) for s in schemas]
    columns: list[ColumnSchema] = []
    blocks: list[np.ndarray] = []  # per used column: its merged rows (slots, Σ H)
    for column in schemas[0].columns:
        if column.kind == "ignored":
            columns.append(column)
            continue
        mine = [
            (where[column.name], layer.weight)
            for where, layer in zip(placed, first_layers, strict=True)
        ]
        if column.kind == "numeric":
            merged, rows = _numeric(column, mine)
        else:
            merged, rows = _categorical(column, mine)
        columns.append(merged)
        blocks.append(rows)
    schema = replace(schemas[0], columns=tuple(columns))
    bias = np.concatenate([layer.bias for layer in first_layers])
    return ColumnFront(schema), AffineLayer(np.vstack(blocks), bias)


def _numeric(
    column: ColumnSchema, members: list[tuple[tuple[ColumnSchema, int], np.ndarray]]
) -> tuple[ColumnSchema, np.ndarray]:
    fills = [own.fill for (own, _), _ in members]
    centre = next((fill for fill in fills if fill is not None), None)
    values = np.hstack([weight[offset][None, :] for (_, offset), weight in members])
    if centre is None:  # no member fills a gap: none has an indicator either
        return replace(column, fill=None, indicator=False), values
    indicator = np.hstack(
        [
            (((own.fill or 0.0) - centre) * weight[offset])[None, :]
            + (weight[offset + 1][None, :] if own.indicator else 0.0)
            for (own, offset), weight in members
        ]
    )
    if not np.any(indicator):
        return replace(column, fill=centre, indicator=False), values
    return replace(column, fill=centre, indicator=True), np.vstack([values, indicator])


def _categorical(
    column: ColumnSchema, members: list[tuple[tuple[ColumnSchema, int], np.ndarray]]
) -> tuple[ColumnSchema, np.ndarray]:
    levels = list(dict.fromkeys(value for (own, _), _ in members for value, _ in own.levels))
    parts = []
    for (own, offset), weight in members:
        rows = weight[offset : offset + len(own.inputs)]
        kept = {value: i for i, (value, _) in enumerate(own.levels)}
        zero = np.zeros(weight.shape[1])
        default = rows[len(kept)] if own.other_count else zero
        missing = rows[len(kept) + bool(own.other_count)] if own.missing_count else default
        slots = [rows[kept[level]] if level in kept else default for level in levels]
        parts.append(np.vstack([*slots, default, missing]))
    merged = replace(
        column,
        levels=tuple((level, 1) for level in levels),
        rare=(MERGED_OTHER,),
        missing_count=max(1, column.missing_count),
    )
    return merged, np.hstack(parts)
