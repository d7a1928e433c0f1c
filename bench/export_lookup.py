"""onnxruntime latency of a categorical column's folded lookup: ai.onnx.ml LabelEncoder + Gather
(what `bnserve export` writes) vs core operators only (Equal against the levels, Cast, MatMul).

The LabelEncoder form maps each column's cells to rows of one stacked table, one Gather takes
them all and ReduceSum adds them (export/columns.py). The core-operator form compares each
[N, 1] string input with a [1, K] constant of the column's keys (Equal takes strings from opset
19 only; bnserve's graphs are opset 17), casts the [N, K] match to float and multiplies it with
the column's folded rows; an unseen level's `<other>` row is added with weight 1 − Σ matches.
Both graphs are otherwise the same model, and give the same answers (checked).

Two models, each measured side by side in one run (rounds alternate between the two forms so
machine noise hits both alike; each figure is the median over rounds): penguins (2 categorical
columns of 3 and 2 levels, 5 numeric, hidden 16, 8: its schema from a quick training run on
tests/training/fixtures/penguins.csv) and a synthetic one with 8 numeric columns and 4
categorical columns of 100 levels (hidden 64, 64, random weights: latency does not depend on
the values). Per call with a single record, and per record at batch 64.

    .venv/bin/python bench/export_lookup.py [--rounds 7] [--calls 3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file is bench/export_lookup.py: run as a script, its own folder comes first on sys.path
# and `import export` would find bench/export.py instead of the package. Drop that entry first.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from bnserve.export import graph  # noqa: E402
from bnserve.export.columns import ColumnFront, lookup_table  # noqa: E402
from bnserve.export.fold import AffineLayer, FoldedNetwork  # noqa: E402
from bnserve.export.graph import build_folded_model  # noqa: E402
from bnserve.export.raw_rows import feeds_of, synthetic_rows  # noqa: E402
from bnserve.training.data.schema import ColumnSchema, TableSchema  # noqa: E402

PENGUINS = Path(__file__).resolve().parents[1] / "tests" / "training" / "fixtures" / "penguins.csv"
BATCH = 64
EQUAL_OPSET = 19  # Equal on strings


def penguins_schema() -> TableSchema:
    """The schema a training run fits on penguins.csv (2 epochs are enough to write it)."""
    from bnserve.training.config import TrainConfig
    from bnserve.training.rundir import read_json
    from bnserve.training.train import train

    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        config = TrainConfig(data=str(PENGUINS), target="species", hidden=(8,), epochs=1)
        train(config, run_dir, progress=False, plot=False, cache_dir="off")
        return TableSchema.from_dict(read_json(run_dir / "schema.json"))


def wide_schema(levels: int = 100, categorical: int = 4, numeric: int = 8) -> TableSchema:
    """8 numeric columns (with gaps) and 4 categorical ones of `levels` levels, a few rare."""
    columns = [
        ColumnSchema(f"n{i}", "numeric", "inferred", 10, fill=float(i), indicator=True)
        for i in range(numeric)
    ]
    for c in range(categorical):
        kept = tuple((f"level{v:03d}", 100 + v) for v in range(levels))
        columns.append(
            ColumnSchema(f"c{c}", "categorical", "inferred", 5, levels=kept, rare=(("rare", 1),))
        )
    return TableSchema(tuple(columns), 10_000, 2, 1000, ())


def random_network(schema: TableSchema, hidden: tuple[int, ...], seed: int = 0) -> FoldedNetwork:
    rng = np.random.default_rng(seed)
    widths = [len(schema.inputs), *hidden, 3]
    layers = tuple(
        AffineLayer(rng.normal(0, 0.3, (fan_in, width)), rng.normal(0, 0.1, width))
        for fan_in, width in itertools.pairwise(widths)
    )
    return FoldedNetwork(layers, "relu", "classification")


class EqualFront(ColumnFront):
    """export/columns.py's first layer with the categorical lookups in core operators: per
    column Equal(cells [N, 1], keys [1, K]) → Cast → MatMul with the keys' rows, plus the
    `<other>` row weighted by 1 − Σ matches when the column has one; the columns summed."""

    def categorical_part(self, builder, weight, categorical):  # type: ignore[no-untyped-def]
        parts = []
        for index, column, offset in categorical:
            table, keys, values, default = lookup_table(
                column, weight[offset : offset + len(column.inputs)], self.tokens
            )
            name = f"column.{index}"
            builder.initializers.append(
                helper.make_tensor(f"{name}.keys", TensorProto.STRING, [1, len(keys)], keys)
            )
            match = builder.node(
                "Equal", [column.name, f"{name}.keys"], f"{name}.match", f"{name}.equal"
            )
            hot = builder.node("Cast", [match], f"{name}.hot", f"{name}.cast", to=TensorProto.FLOAT)
            rows = builder.constant(f"{name}.key_rows", table[values])
            z = builder.node("MatMul", [hot, rows], f"{name}.kz", f"{name}.matmul")
            if np.any(table[default]):
                axes = builder.tensor(f"{name}.axes", np.array([1], dtype=np.int64))
                found = builder.node("ReduceSum", [hot, axes], f"{name}.n", f"{name}.sum")
                one = builder.constant(f"{name}.one", np.ones(1))
                unseen = builder.node("Sub", [one, found], f"{name}.unseen", f"{name}.sub")
                other = builder.constant(f"{name}.other", table[default][None, :])
                extra = builder.node("Mul", [unseen, other], f"{name}.oz", f"{name}.mul")
                z = builder.node("Add", [z, extra], f"{name}.z", f"{name}.add")
            parts.append(z)
        if len(parts) == 1:
            return parts[0]
        return builder.node("Sum", parts, "input.categorical_z", "input.categorical_sum")


def equal_model(network: FoldedNetwork, schema: TableSchema) -> onnx.ModelProto:
    """The model with EqualFront, at opset EQUAL_OPSET (Equal takes strings from there)."""
    opset = graph.OPSET
    graph.OPSET = EQUAL_OPSET  # graph.py checks the model against its main opset
    try:
        return build_folded_model(network, front=EqualFront(schema))
    finally:
        graph.OPSET = opset


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def seconds_per_call(run: ort.InferenceSession, feeds: dict[str, np.ndarray], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run.run(None, feeds)
    return (time.perf_counter() - start) / calls


def compare(
    name: str, schema: TableSchema, hidden: tuple[int, ...], args: argparse.Namespace
) -> None:
    network = random_network(schema, hidden)
    forms = {
        "LabelEncoder+Gather": build_folded_model(network, front=ColumnFront(schema)),
        "Equal+Cast+MatMul": equal_model(network, schema),
    }
    sessions = {form: session(graph, args.threads) for form, graph in forms.items()}
    records = synthetic_rows(schema, BATCH)
    one = feeds_of(schema, records.take(np.array([0])))
    batch = feeds_of(schema, records)
    answers = [s.run(["probabilities"], batch)[0] for s in sessions.values()]
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-6)  # the same model both ways
    timings: dict[str, dict[str, list[float]]] = {form: {"one": [], "batch": []} for form in forms}
    for _ in range(args.rounds):
        for form, run in sessions.items():
            timings[form]["one"].append(seconds_per_call(run, one, args.calls))
            per_batch = seconds_per_call(run, batch, max(1, args.calls // 8))
            timings[form]["batch"].append(per_batch / BATCH)
    for form in forms:
        single = statistics.median(timings[form]["one"]) * 1e6
        per_record = statistics.median(timings[form]["batch"]) * 1e6
        print(f"{name:<24} {form:<20} {single:>8.1f} µs/call {per_record:>8.2f} µs/record @64")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(
        f"onnxruntime {ort.__version__}, {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.2f} at the start (indicative on a shared machine)"
    )
    compare("penguins (3+2 levels)", penguins_schema(), (16, 8), args)
    compare("8 numeric + 4×100 levels", wide_schema(), (64, 64), args)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
