"""Hand-made format-2 ("mixed") model files, built with onnx, for serving tests and benches.

They follow the issue-26 contract (docs/contracts.md "The ONNX model"): one graph input per used
column named after it, numeric `tensor(float)` [N, 1] (NaN: missing) and categorical
`tensor(string)` [N, 1] (empty or a missing token: missing), through ai.onnx.ml LabelEncoder →
Gather (the one-hot times W1 as a row lookup) → Sum → Relu/Gemm → Softmax/ArgMax, with
`bnserve.format` "2", `bnserve.schema`, and reference rows whose outputs come from an
independent float64 numpy path written here (one-hot encode, standardize, matrix products).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NA_VALUES = ("NA", "NaN", "nan", "null", "NULL", "None")
CLASS_NAMES = ["Adelie", "Chinstrap", "Gentoo"]
UNSEEN = "<unseen-level>"


@dataclass(frozen=True)
class Numeric:
    name: str
    mean: float
    std: float
    missing_count: int = 0  # > 0: an indicator input follows the value


@dataclass(frozen=True)
class Categorical:
    name: str
    levels: tuple[str, ...]  # kept levels, sorted
    rare: tuple[str, ...] = ()  # share <other>
    missing_count: int = 0  # > 0: a <missing> input


Column = Numeric | Categorical


@dataclass(frozen=True)
class MixedSpec:
    """The table a mixed model was "trained" on: columns in file order, ignored columns among
    them by name, hidden widths, classes."""

    columns: tuple[Column, ...]
    ignored: tuple[str, ...] = ("rowid",)
    hidden: tuple[int, ...] = (8,)
    class_names: tuple[str, ...] = tuple(CLASS_NAMES)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def slots(self, column: Column) -> list[str]:
        """The network inputs of one column (docs/contracts.md schema.json "inputs")."""
        if isinstance(column, Numeric):
            return [column.name] + ([f"{column.name}:missing"] if column.missing_count else [])
        names = [f"{column.name}={level}" for level in column.levels]
        if column.rare:
            names.append(f"{column.name}=<other>")
        if column.missing_count:
            names.append(f"{column.name}=<missing>")
        return names


PENGUINISH = MixedSpec(
    columns=(
        Numeric("bill_length_mm", 44.0, 5.0, missing_count=2),
        Categorical("island", ("Biscoe", "Dream", "Torgersen"), rare=("Zeta",)),
        Numeric("body_mass_g", 4200.0, 800.0),
        Categorical("sex", ("female", "male"), missing_count=9),
    )
)


# The columns of tests/training/fixtures/penguins.csv (target: species), NA cells as missing.
PENGUINS = MixedSpec(
    columns=(
        Categorical("island", ("Biscoe", "Dream", "Torgersen")),
        Numeric("bill_length_mm", 43.9, 5.5, missing_count=2),
        Numeric("bill_depth_mm", 17.2, 2.0, missing_count=2),
        Numeric("flipper_length_mm", 200.9, 14.1, missing_count=2),
        Numeric("body_mass_g", 4201.8, 802.0, missing_count=2),
        Categorical("sex", ("female", "male"), missing_count=11),
        Numeric("year", 2008.0, 0.8),
    ),
    ignored=(),
    seed=5,
)


def wide_spec(numeric: int, categorical: Sequence[int], hidden: tuple[int, ...]) -> MixedSpec:
    """A larger mixed table: `numeric` numeric columns then one categorical column per entry of
    `categorical` with that many kept levels (bench/serve.py's mixed rows)."""
    columns: list[Column] = [Numeric(f"n{i}", float(i), 1.0 + i) for i in range(numeric)]
    columns += [
        Categorical(f"c{i}", tuple(f"L{j:03d}" for j in range(levels)), ("rare",), 1)
        for i, levels in enumerate(categorical)
    ]
    return MixedSpec(tuple(columns), ignored=(), hidden=hidden)


@dataclass(frozen=True)
class Weights:
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (W (in, out), b (out,)) float32


def random_weights(spec: MixedSpec) -> Weights:
    rng = np.random.default_rng(spec.seed)
    sizes = [sum(len(spec.slots(c)) for c in spec.columns), *spec.hidden, len(spec.class_names)]
    layers = tuple(
        (
            rng.normal(0, 1.5 / math.sqrt(a), (a, b)).astype(np.float32),
            rng.normal(0, 0.1, b).astype(np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    )
    return Weights(layers)


# --- the independent numpy path ------------------------------------------------------------


def encode(spec: MixedSpec, rows: dict[str, list[Any]]) -> np.ndarray:
    """Raw columns (numbers or None; strings, "" or a token for missing) → (N, D) float64 network
    inputs, numeric values standardized, one-hots and indicators 0/1."""
    blocks = []
    for column in spec.columns:
        values = rows[column.name]
        if isinstance(column, Numeric):
            missing = np.array(
                [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
            )
            filled = np.array(
                [column.mean if m else float(v) for v, m in zip(values, missing, strict=True)]
            )
            block = [(filled - column.mean) / column.std]
            if column.missing_count:
                block.append(missing.astype(np.float64))
            blocks.append(np.stack(block, axis=1))
            continue
        slots = spec.slots(column)
        block = np.zeros((len(values), len(slots)))
        for row, text in enumerate(values):
            if text == "" or text in NA_VALUES:
                slot = (
                    f"{column.name}=<missing>" if column.missing_count else f"{column.name}=<other>"
                )
            elif text in column.levels:
                slot = f"{column.name}={text}"
            else:
                slot = f"{column.name}=<other>"
            if slot in slots:
                block[row, slots.index(slot)] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def numpy_forward(
    spec: MixedSpec, weights: Weights, rows: dict[str, list[Any]]
) -> dict[str, np.ndarray]:
    a = encode(spec, rows)
    for i, (w, b) in enumerate(weights.layers):
        a = a @ w.astype(np.float64) + b.astype(np.float64)
        if i < len(weights.layers) - 1:
            a = np.maximum(a, 0.0)
    shifted = np.exp(a - a.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return {"probabilities": probabilities, "label": probabilities.argmax(axis=1)}


# --- the graph -----------------------------------------------------------------------------


def build_graph(spec: MixedSpec, weights: Weights) -> onnx.GraphProto:
    w1, b1 = weights.layers[0]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    inputs = []
    parts = []
    offset = 0
    for index, column in enumerate(spec.columns):
        name = column.name
        width = len(spec.slots(column))
        rows = w1[offset : offset + width]
        offset += width
        if isinstance(column, Numeric):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1]))
            inits += [
                numpy_helper.from_array(np.array([[column.mean]], np.float32), f"c{index}.fill"),
                numpy_helper.from_array(np.array([[column.std]], np.float32), f"c{index}.std"),
                numpy_helper.from_array(rows[:1], f"c{index}.W"),
            ]
            nodes += [
                helper.make_node("IsNaN", [name], [f"c{index}.nan"]),
                helper.make_node(
                    "Where", [f"c{index}.nan", f"c{index}.fill", name], [f"c{index}.filled"]
                ),
                helper.make_node(
                    "Sub", [f"c{index}.filled", f"c{index}.fill"], [f"c{index}.centred"]
                ),
                helper.make_node("Div", [f"c{index}.centred", f"c{index}.std"], [f"c{index}.z"]),
                helper.make_node("MatMul", [f"c{index}.z", f"c{index}.W"], [f"c{index}.part"]),
            ]
            parts.append(f"c{index}.part")
            if column.missing_count:
                inits.append(numpy_helper.from_array(rows[1:2], f"c{index}.Wmissing"))
                nodes += [
                    helper.make_node(
                        "Cast", [f"c{index}.nan"], [f"c{index}.ind"], to=TensorProto.FLOAT
                    ),
                    helper.make_node(
                        "MatMul", [f"c{index}.ind", f"c{index}.Wmissing"], [f"c{index}.partm"]
                    ),
                ]
                parts.append(f"c{index}.partm")
            continue
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["N", 1]))
        slots = spec.slots(column)
        none = len(slots)  # the zero row: a cell that lands on no input
        other = slots.index(f"{name}=<other>") if column.rare else none
        missing = slots.index(f"{name}=<missing>") if column.missing_count else other
        keys = list(column.levels) + list(column.rare) + list(NA_VALUES) + [""]
        values = (
            list(range(len(column.levels)))
            + [other] * len(column.rare)
            + [missing] * (len(NA_VALUES) + 1)
        )
        table = np.concatenate([rows, np.zeros((1, rows.shape[1]), np.float32)])
        inits.append(numpy_helper.from_array(table, f"c{index}.table"))
        nodes += [
            helper.make_node(
                "LabelEncoder",
                [name],
                [f"c{index}.code"],
                domain="ai.onnx.ml",
                keys_strings=keys,
                values_int64s=values,
                default_int64=other,
            ),
            helper.make_node("Reshape", [f"c{index}.code", "flat"], [f"c{index}.flat"]),
            helper.make_node(
                "Gather", [f"c{index}.table", f"c{index}.flat"], [f"c{index}.part"], axis=0
            ),
        ]
        parts.append(f"c{index}.part")
    inits.append(numpy_helper.from_array(b1, "hidden1.b"))
    nodes += [
        helper.make_node("Sum", parts, ["hidden1.sum"]),
        helper.make_node("Add", ["hidden1.sum", "hidden1.b"], ["hidden1.z"]),
        helper.make_node("Relu", ["hidden1.z"], ["a1"]),
    ]
    last = "a1"
    for i, (w, b) in enumerate(weights.layers[1:], start=2):
        out = i == len(weights.layers)
        prefix = "output" if out else f"hidden{i}"
        inits += [
            numpy_helper.from_array(w, f"{prefix}.W"),
            numpy_helper.from_array(b, f"{prefix}.b"),
        ]
        target = "logits" if out else f"{prefix}.z"
        nodes.append(helper.make_node("Gemm", [last, f"{prefix}.W", f"{prefix}.b"], [target]))
        if not out:
            nodes.append(helper.make_node("Relu", [target], [f"a{i}"]))
            last = f"a{i}"
    classes = len(spec.class_names)
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
    ]
    return helper.make_graph(nodes, "bnserve_test_mixed", inputs, outputs, inits)


# --- reference rows and metadata -----------------------------------------------------------


def reference_rows(spec: MixedSpec, count: int = 6) -> dict[str, list[Any]]:
    """Random raw rows (some cells missing), a row with every cell missing, one with every
    categorical column unseen, and rows covering every kept level."""
    rng = np.random.default_rng(spec.seed + 7)
    widest = max((len(c.levels) for c in spec.columns if isinstance(c, Categorical)), default=1)
    total = count + 2 + widest
    rows: dict[str, list[Any]] = {}
    for column in spec.columns:
        if isinstance(column, Numeric):
            values: list[Any] = [
                float(np.float32(rng.normal(column.mean, column.std))) for _ in range(total)
            ]
            values[1] = None
            values[count] = None  # the all-missing row
        else:
            values = [str(rng.choice(column.levels)) for _ in range(count)]
            values[2] = ""
            values += ["", UNSEEN]
            values += [column.levels[i % len(column.levels)] for i in range(widest)]
        rows[column.name] = values
    return rows


def schema_json(spec: MixedSpec) -> str:
    columns: list[dict[str, Any]] = [
        {"name": name, "kind": "ignored", "why": "--ignore", "missing_count": 0}
        for name in spec.ignored
    ]
    for column in spec.columns:
        if isinstance(column, Numeric):
            columns.append(
                {
                    "name": column.name,
                    "kind": "numeric",
                    "why": "inferred",
                    "missing_count": column.missing_count,
                    "fill": column.mean,
                    "indicator": bool(column.missing_count),
                }
            )
        else:
            columns.append(
                {
                    "name": column.name,
                    "kind": "categorical",
                    "why": "inferred",
                    "missing_count": column.missing_count,
                    "levels": [{"value": level, "count": 10} for level in column.levels],
                    "rare": [{"value": level, "count": 1} for level in column.rare],
                }
            )
    inputs = [
        {"name": c.name, "kind": "numeric" if isinstance(c, Numeric) else "categorical"}
        for c in spec.columns
    ]
    return json.dumps(
        {"version": 1, "na_values": list(NA_VALUES), "inputs": inputs, "columns": columns}
    )


def build_mixed_model(
    spec: MixedSpec = PENGUINISH, *, tamper: bool = False
) -> tuple[onnx.ModelProto, Weights, dict[str, list[Any]]]:
    """The model, its weights and its raw reference rows; tamper shifts the stored reference
    probabilities so that the parity gate must refuse the file."""
    weights = random_weights(spec)
    graph = build_graph(spec, weights)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 9
    rows = reference_rows(spec)
    reference = numpy_forward(spec, weights, rows)
    if tamper:
        reference["probabilities"] = reference["probabilities"][:, ::-1].copy()
    metadata = {
        "bnserve.format": "2",
        "bnserve.task": "classification",
        "bnserve.feature_names": json.dumps(spec.input_names),
        "bnserve.class_names": json.dumps(list(spec.class_names)),
        "bnserve.schema": schema_json(spec),
        "bnserve.stats": "ema",
        "bnserve.bn_momentum": "0.1",
        "bnserve.running_var": "unbiased",
        "bnserve.epsilon": "1e-05",
        "bnserve.folded": "true",
        "bnserve.fold_max_abs_error": "1e-7",
        "bnserve.run_id": f"test-mixed-{spec.seed}",
        "bnserve.params_sha256": "0" * 64,
        "bnserve.graph_sha256": hashlib.sha256(model.graph.SerializeToString()).hexdigest(),
        "bnserve.reference_inputs": json.dumps(
            {name: [[v] for v in values] for name, values in rows.items()}
        ),
        "bnserve.reference_outputs": json.dumps({k: v.tolist() for k, v in reference.items()}),
        "bnserve.reference_tolerance": json.dumps({"abs": 1e-5}),
        "bnserve.training": json.dumps({"config": {"hidden": list(spec.hidden)}, "metrics": {}}),
        "bnserve.created_at": "2026-01-01T00:00:00Z",
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model, weights, rows


def write_mixed_model(path: Path, spec: MixedSpec = PENGUINISH, *, tamper: bool = False) -> Path:
    """Write a mixed model file at path (a directory layout is the caller's)."""
    model, _, _ = build_mixed_model(spec, tamper=tamper)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def expected(spec: MixedSpec, rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """What a correct server answers for raw rows (the numpy path, float64)."""
    return numpy_forward(spec, random_weights(spec), rows)


def build_numeric_model(features: int, hidden: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    """A format-1 model of the same widths taking x [N, features] (bench/serve.py's numbers-only
    twin of a mixed model): Gemm/Relu layers, Softmax/ArgMax, reference rows from numpy."""
    spec = MixedSpec(
        tuple(Numeric(f"f{i}", 0.0, 1.0) for i in range(features)), (), hidden, seed=seed
    )
    weights = random_weights(spec)
    nodes, inits, last = [], [], "x"
    for i, (w, b) in enumerate(weights.layers, start=1):
        out = i == len(weights.layers)
        prefix = "output" if out else f"hidden{i}"
        inits += [
            numpy_helper.from_array(w, f"{prefix}.W"),
            numpy_helper.from_array(b, f"{prefix}.b"),
        ]
        target = "logits" if out else f"{prefix}.z"
        nodes.append(helper.make_node("Gemm", [last, f"{prefix}.W", f"{prefix}.b"], [target]))
        if not out:
            nodes.append(helper.make_node("Relu", [target], [f"a{i}"]))
            last = f"a{i}"
    classes = len(spec.class_names)
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "bnserve_test_numeric",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    x = np.random.default_rng(seed).normal(0, 1, (8, features)).astype(np.float32)
    reference = numpy_forward(spec, weights, {f"f{i}": x[:, i].tolist() for i in range(features)})
    metadata = {
        "bnserve.format": "1",
        "bnserve.task": "classification",
        "bnserve.feature_names": json.dumps([f"f{i}" for i in range(features)]),
        "bnserve.class_names": json.dumps(list(spec.class_names)),
        "bnserve.stats": "ema",
        "bnserve.bn_momentum": "0.1",
        "bnserve.running_var": "unbiased",
        "bnserve.epsilon": "1e-05",
        "bnserve.folded": "true",
        "bnserve.fold_max_abs_error": "1e-7",
        "bnserve.run_id": f"test-numeric-{seed}",
        "bnserve.params_sha256": "0" * 64,
        "bnserve.graph_sha256": hashlib.sha256(model.graph.SerializeToString()).hexdigest(),
        "bnserve.reference_inputs": json.dumps(x.tolist()),
        "bnserve.reference_outputs": json.dumps({k: v.tolist() for k, v in reference.items()}),
        "bnserve.reference_tolerance": json.dumps({"abs": 1e-5}),
        "bnserve.training": json.dumps({"config": {"hidden": list(hidden)}, "metrics": {}}),
        "bnserve.created_at": "2026-01-01T00:00:00Z",
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model
