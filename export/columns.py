"""The first layer of a model that scores raw records: fills, missing indicators and the
categorical lookups folded into it (issue 26 phase 2; docs/export.md "Raw columns").

The run's network reads D design inputs (training/data/encoding.py): per numeric column its
value (a missing one filled with the training mean) and a 0/1 indicator when training had gaps;
per categorical column a one-hot over its slots (kept levels, `<other>`, `<missing>`). After
`fold_params` the first layer is z = d @ W + b over those design inputs (standardization and
batch norm already in W and b), and this module splits W by rows:

- numeric values: concat the numeric inputs [N, Fn] → IsNaN → Where(fill) → Gemm(W_values, b);
- indicators: Cast(IsNaN) [N, Fn] → MatMul(W_indicators), rows of columns without one zero;
- each categorical column: LabelEncoder (ai.onnx.ml, string → int64 slot; a missing token →
  the `<missing>` slot; anything else unknown → `<other>`) → Gather from its rows of W, plus
  an all-zero row where a cell has no slot;

and z is the Sum of the parts (`hidden1.z`). A table of numbers only keeps the single input x
[N, F] (its used columns); without fills the plain Gemm of graph.py is used instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from bnserve.export.errors import ExportError
from bnserve.export.fold import AffineLayer, InputClip
from bnserve.export.graph import BATCH_DIM, GraphBuilder, add_smooth_clip
from bnserve.server.modelfile.contract import INPUT_NAME, OUTPUT_NAMES
from bnserve.server.modelfile.schema import CATEGORICAL, NUMERIC, SCHEMA_FORMAT
from bnserve.training.data.mixed import DEFAULT_NA_VALUES
from bnserve.training.data.schema import ColumnSchema, TableSchema

ML_DOMAIN = "ai.onnx.ml"
# ai.onnx.ml 3 is the set released with opset 17 (onnx 1.12); its LabelEncoder is version 2,
# which maps strings to int64 and which onnxruntime runs.
ML_OPSET = 3


def missing_tokens(schema: TableSchema) -> tuple[str, ...]:
    """Every cell text that means missing: the readers' defaults ("" included), then the run's
    --na-values, each once."""
    extra = tuple(cell for cell in dict.fromkeys(schema.na_values) if cell not in DEFAULT_NA_VALUES)
    return DEFAULT_NA_VALUES + extra


def used_columns(schema: TableSchema) -> list[ColumnSchema]:
    """The columns the network reads (numeric and categorical), in table order."""
    return [column for column in schema.columns if column.kind != "ignored"]


def is_mixed(schema: TableSchema) -> bool:
    """The table had a categorical column: one graph input per used column."""
    return any(column.kind == CATEGORICAL for column in schema.columns)


def needs_front(schema: TableSchema) -> bool:
    """The graph needs more than a Gemm on x: a categorical column or a fill."""
    return schema.needs_preprocessing


def input_names(schema: TableSchema) -> list[str]:
    """`bnserve.feature_names` of a format-2 model: the graph inputs of a mixed model (the used
    columns); the columns of x for a numbers-only one. Either way the used columns' names."""
    return [column.name for column in used_columns(schema)]


def graph_inputs(schema: TableSchema) -> list[dict[str, Any]]:
    """`bnserve.schema` "inputs": the graph's inputs in order."""
    if is_mixed(schema):
        return [{"name": column.name, "kind": column.kind} for column in used_columns(schema)]
    return [{"name": INPUT_NAME, "kind": NUMERIC, "columns": input_names(schema)}]


def schema_metadata(schema: TableSchema) -> dict[str, Any]:
    """The `bnserve.schema` object (docs/contracts.md): version, missing tokens, graph inputs,
    and schema.json's columns (ignored ones included)."""
    return {
        "version": SCHEMA_FORMAT,
        "na_values": list(missing_tokens(schema)),
        "inputs": graph_inputs(schema),
        "columns": [column.to_dict() for column in schema.columns],
    }


def taken_name(name: str) -> bool:
    """A name the graph's own tensors use (outputs, layers, this module's), which a column
    input cannot have (ONNX names each tensor once)."""
    outputs = {*OUTPUT_NAMES["classification"], *OUTPUT_NAMES["regression"], "logits"}
    layer = re.fullmatch(r"(hidden\d+|output)\.\w+", name) is not None
    return name in outputs or layer or name.startswith(("input.", "column."))


def design_offsets(schema: TableSchema) -> list[tuple[ColumnSchema, int]]:
    """Each used column with the position of its first design input."""
    placed, offset = [], 0
    for column in used_columns(schema):
        placed.append((column, offset))
        offset += len(column.inputs)
    return placed


class ColumnFront:
    """graph.Front for a run with a schema: raw columns (or x with gaps) in, z of layer 1 out."""

    def __init__(self, schema: TableSchema, input_clip: InputClip | None = None) -> None:
        self.schema = schema
        self.input_clip = input_clip  # robust scaling: the numeric values scaled and clipped
        self.mixed = is_mixed(schema)
        self.tokens = missing_tokens(schema)
        if self.mixed:
            for column in used_columns(schema):
                if taken_name(column.name):
                    raise ExportError(
                        f"column {column.name!r}: its name is taken by one of the graph's own "
                        "tensors, and each input is named after its column; rename the column "
                        "in the table (or --ignore it) and train again"
                    )

    @property
    def inputs(self) -> list[onnx.ValueInfoProto]:
        if not self.mixed:
            width = len(used_columns(self.schema))
            return [
                helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, width])
            ]
        return [
            helper.make_tensor_value_info(
                column.name,
                TensorProto.STRING if column.kind == CATEGORICAL else TensorProto.FLOAT,
                [BATCH_DIM, 1],
            )
            for column in used_columns(self.schema)
        ]

    @property
    def opsets(self) -> Sequence[tuple[str, int]]:
        return [(ML_DOMAIN, ML_OPSET)] if self.mixed else []

    def first_layer(self, builder: GraphBuilder, layer: AffineLayer, output: str) -> str:
        """Add the nodes computing `output` [N, H] = d @ layer.weight + layer.bias, d being the
        design inputs the raw inputs encode to."""
        prefix = output.removesuffix(".z") if output.endswith(".z") else "output"
        weight, bias = layer.weight, layer.bias
        placed = design_offsets(self.schema)
        numeric = [(column, offset) for column, offset in placed if column.kind == NUMERIC]
        categorical = [
            (index, column, offset)
            for index, (column, offset) in enumerate(placed)
            if column.kind == CATEGORICAL
        ]
        parts: list[str] = []
        if numeric:
            only = not categorical and not any(column.indicator for column, _ in numeric)
            parts += self._numeric(builder, weight, bias, numeric, output if only else None, prefix)
        else:
            parts.append(builder.constant(f"{prefix}.bias", bias))
        if categorical:
            parts.append(self.categorical_part(builder, weight, categorical))
        if parts == [output]:
            return output
        return builder.node("Sum", parts, output, f"{prefix}.sum")

    def _numeric(
        self,
        builder: GraphBuilder,
        weight: np.ndarray,
        bias: np.ndarray,
        numeric: list[tuple[ColumnSchema, int]],
        output: str | None,
        prefix: str,
    ) -> list[str]:
        """The numeric values' Gemm (with the bias) and the indicators' MatMul."""
        if not self.mixed:
            x = INPUT_NAME
        elif len(numeric) == 1:
            x = numeric[0][0].name
        else:
            names = [column.name for column, _ in numeric]
            x = builder.node("Concat", names, "input.numeric", "input.concat", axis=1)
        fills = np.array([np.nan if c.fill is None else c.fill for c, _ in numeric])
        rows = weight[[offset for _, offset in numeric]]
        filled, isnan = x, ""
        if self.input_clip is not None:
            filled, isnan = self._robust(builder, x, fills, [offset for _, offset in numeric])
        elif not np.all(np.isnan(fills)):
            # x − m, then 0 where missing: with m the fill (the training mean, which is also
            # the standardization's mean), a value far from 0 with a small spread (a year)
            # keeps its float32 precision instead of cancelling against a large bias.
            centre = np.where(np.isnan(fills), 0.0, fills)
            isnan = builder.node("IsNaN", [x], "input.isnan", "input.isnan")
            centred = builder.node(
                "Sub", [x, builder.constant("input.fill", centre)], "input.centred", "input.sub"
            )
            zero = builder.constant("input.zero", np.zeros(1))
            filled = builder.node("Where", [isnan, zero, centred], "input.filled", "input.where")
            bias = bias + centre @ rows  # (x − m) @ W + (b + m @ W) = x @ W + b, in float64
        z = builder.node(
            "Gemm",
            [
                filled,
                builder.constant(f"{prefix}.weight", rows),
                builder.constant(f"{prefix}.bias", bias),
            ],
            output or "input.numeric_z",
            f"{prefix}.gemm",
        )
        parts = [z]
        if any(column.indicator for column, _ in numeric):
            indicator_rows = np.zeros((len(numeric), weight.shape[1]))
            for position, (column, offset) in enumerate(numeric):
                if column.indicator:
                    indicator_rows[position] = weight[offset + 1]
            flags = builder.node(
                "Cast", [isnan], "input.missing", "input.cast", to=TensorProto.FLOAT
            )
            parts.append(
                builder.node(
                    "MatMul",
                    [flags, builder.constant("input.indicator_weight", indicator_rows)],
                    "input.indicator_z",
                    "input.indicator_matmul",
                )
            )
        return parts

    def _robust(
        self, builder: GraphBuilder, x: str, fills: np.ndarray, offsets: list[int]
    ) -> tuple[str, str]:
        """The numeric values [N, Fn] filled, robust-scaled and clipped (training/scaling.py),
        and the IsNaN tensor ("" when no column had gaps): Sub(median), Where(missing: fill −
        median), Div(scale), then the smooth clip. Returns (clipped, isnan)."""
        assert self.input_clip is not None
        centre, scale = self.input_clip.centre[offsets], self.input_clip.scale[offsets]
        centred = builder.node(
            "Sub", [x, builder.constant("input.centre", centre)], "input.centred", "input.sub"
        )
        isnan = ""
        if not np.all(np.isnan(fills)):
            isnan = builder.node("IsNaN", [x], "input.isnan", "input.isnan")
            fill = builder.constant("input.fill_centred", np.nan_to_num(fills, nan=0.0) - centre)
            centred = builder.node("Where", [isnan, fill, centred], "input.filled", "input.where")
        u = builder.node(
            "Div", [centred, builder.constant("input.scale", scale)], "input.u", "input.div"
        )
        return add_smooth_clip(builder, u, np.ones(len(offsets), dtype=bool)), isnan

    def categorical_part(
        self,
        builder: GraphBuilder,
        weight: np.ndarray,
        categorical: list[tuple[int, ColumnSchema, int]],
    ) -> str:
        """Every categorical column's rows of W, looked up by its cells and summed: [N, H].

        Each column's LabelEncoder gives its cells' rows in one table stacking every column's
        (its values offset by the rows before it); one Gather takes the C rows of each record
        [N, C, H] and ReduceSum adds them up: C + 3 nodes for C columns, not 3·C."""
        tables, slots = [], []
        start = 0
        for index, column, offset in categorical:
            table, keys, values, default = lookup_table(
                column, weight[offset : offset + len(column.inputs)], self.tokens
            )
            name = f"column.{index}"
            builder.nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [column.name],
                    [f"{name}.row"],
                    name=f"{name}.label_encoder",
                    domain=ML_DOMAIN,
                    keys_strings=keys,
                    values_int64s=[start + value for value in values],
                    default_int64=start + default,
                )
            )
            slots.append(f"{name}.row")
            tables.append(table)
            start += table.shape[0]
        rows = slots[0]
        if len(slots) > 1:
            rows = builder.node("Concat", slots, "input.rows", "input.rows_concat", axis=1)
        stacked = builder.constant("input.table", np.vstack(tables))
        picked = builder.node("Gather", [stacked, rows], "input.picked", "input.gather", axis=0)
        axes = builder.tensor("input.sum_axes", np.array([1], dtype=np.int64))
        return builder.node(
            "ReduceSum", [picked, axes], "input.categorical_z", "input.reduce_sum", keepdims=0
        )


def lookup_table(
    column: ColumnSchema, rows: np.ndarray, tokens: Sequence[str]
) -> tuple[np.ndarray, list[str], list[int], int]:
    """A categorical column's folded table and the LabelEncoder that indexes it.

    rows (S, H): the first layer's folded rows of the column's S slots (kept levels, `<other>`,
    `<missing>`). Returns the table (S or S + 1, H) (an all-zero last row where some cell has no
    slot), the keys (kept levels, then the missing tokens), their table rows, and the default
    row (levels never seen in training and rare ones: `<other>`, or the zero row)."""
    kept = len(column.levels)
    other = kept if column.other_count else -1
    missing = kept + (other >= 0) if column.missing_count else -1
    zero = rows.shape[0]
    missing_row = missing if missing >= 0 else other if other >= 0 else zero
    default = other if other >= 0 else zero
    table = rows
    if zero in (missing_row, default):
        table = np.vstack([rows, np.zeros((1, rows.shape[1]))])
    levels = [value for value, _ in column.levels]
    tokens = [token for token in tokens if token not in levels]
    keys = [*levels, *tokens]
    values = [*range(kept), *([missing_row] * len(tokens))]
    return table, keys, values, default
