"""Mixed-input rows of bench/serve.py (issue 26): the cost of raw text columns and gaps.

Two bnserve servers, flags identical, side by side in one run (interleaved rounds):
  (a) a mixed model: 8 numeric columns + 4 categorical columns of 10, 30, 60 and 100 levels
      (one graph input per column: LabelEncoder → Gather per categorical column);
  (b) a numbers-only model with 12 inputs (x [N, 12]) and the same hidden widths.
Rows: v2 gRPC ModelInfer of one example (raw_input_contents, as tritonclient sends: 12 tensors,
4 of them BYTES, against one FP32 [1, 12]) at each concurrency, in requests/s; and PredictBatch
of 64 examples (`columns` against `raw_features`) in examples/s. The ratios mixed / numeric are
printed beside the goals: ≥ 0.85× the requests/s, ≥ 0.5× the examples/s.

How the goal is judged (as `bench/serve.py --capture` judges capture's): many short rounds
(`--mixed` defaults to 21 rounds of 1 s), the two servers one after the other in each round,
the order alternating, each run after the server before it settled; each round gives one ratio
of two runs close in time, and the row shows the median of those ratios (with its quartiles),
not the ratio of the two medians. Beside it, both servers' CPU µs per call (process and
children, read from /proc around each run): the work the mixed path adds, far steadier than
rates on a shared machine.

The models: trained on synthetic CSVs for 2 epochs and exported (the real path), or, while
`bnserve export` refuses runs with text columns, the hand-made pair of
tests/support/mixed_model.py (same hidden widths, same graph shape as the contract's); the run
says which.

Run by bench/serve.py after its other rows, or alone: python bench/serve.py --mixed [--quick].
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve

NUMERIC_COLUMNS = 8
LEVELS = (10, 30, 60, 100)  # kept levels of the 4 categorical columns
GOAL_REQUESTS = 0.85  # mixed / numeric requests/s, v2 ModelInfer, each concurrency
GOAL_EXAMPLES = 0.5  # mixed / numeric examples/s, PredictBatch of 64
MIXED = "mixed model"
NUMERIC = "numbers-only model"
ROWS = 4000  # synthetic training rows


def synthetic_tables(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """A mixed CSV (8 numeric + 4 categorical columns, 2% gaps, target `y`) and a numeric CSV
    of 12 columns (target `y`), written for training."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(0, 1, (ROWS, NUMERIC_COLUMNS))
    codes = [rng.integers(0, levels, ROWS) for levels in LEVELS]
    score = numeric[:, 0] + numeric[:, 1] - numeric[:, 2] + sum((c % 3) - 1 for c in codes)
    target = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    header = [f"n{i}" for i in range(NUMERIC_COLUMNS)] + [f"c{i}" for i in range(len(LEVELS))]
    lines = [",".join([*header, "y"])]
    for row in range(ROWS):
        cells = [
            "" if rng.random() < 0.02 else f"{numeric[row, i]:.5f}" for i in range(NUMERIC_COLUMNS)
        ]
        cells += [f"L{c[row]:03d}" for c in codes]
        lines.append(",".join([*cells, f"k{target[row]}"]))
    mixed = directory / "mixed.csv"
    mixed.write_text("\n".join(lines) + "\n")
    wide = np.concatenate([numeric, rng.normal(0, 1, (ROWS, 12 - NUMERIC_COLUMNS))], axis=1)
    numbers = directory / "numeric.csv"
    numbers.write_text(
        ",".join([*(f"f{i}" for i in range(12)), "y"])
        + "\n"
        + "\n".join(
            ",".join([*(f"{v:.5f}" for v in wide[row]), f"k{target[row]}"]) for row in range(ROWS)
        )
        + "\n"
    )
    return mixed, numbers


def build_models(directory: Path, hidden: tuple[int, ...]) -> tuple[Path, Path, str]:
    """(mixed model, numbers-only model, how they were made)."""
    try:
        return (*_exported(directory, hidden), "trained 2 epochs and exported")
    except Exception as error:  # export refuses text columns until issue 26's exporter lands
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"(real export of a mixed run not available: {reason})", file=sys.stderr)
    from tests.support.mixed_model import build_numeric_model, wide_spec, write_mixed_model

    spec = wide_spec(NUMERIC_COLUMNS, LEVELS, hidden)
    mixed = write_mixed_model(directory / "mixed.onnx", spec)
    numeric = directory / "numeric.onnx"
    numeric.write_bytes(build_numeric_model(12, hidden).SerializeToString())
    return mixed, numeric, "hand-made (tests/support/mixed_model.py), random weights"


def _exported(directory: Path, hidden: tuple[int, ...]) -> tuple[Path, Path]:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.train import train

    mixed_csv, numeric_csv = synthetic_tables(directory)
    paths = []
    for name, data in (("mixed", mixed_csv), ("numeric", numeric_csv)):
        config = TrainConfig(data=str(data), target="y", hidden=hidden, epochs=2, seed=0)
        run_dir = Path(train(config, directory / f"run-{name}", progress=False).run_dir)
        paths.append(
            export_run(ExportSettings(run_dir=run_dir, out=directory / f"{name}.onnx")).out
        )
    return paths[0], paths[1]


def _schema_inputs(model: Path) -> list[dict[str, Any]]:
    import json

    import onnxruntime as ort

    metadata = ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map
    return list(json.loads(metadata["bnserve.schema"])["inputs"])


def _bytes_element(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(4, "little") + data


def mixed_messages(model: Path, batch: int) -> dict[str, bytes]:
    """One v2 ModelInfer (raw contents, one tensor per column) and one PredictBatch of `batch`
    rows by columns, from levels the model knows and a gap in each numeric column's 10th row."""
    import json

    import onnxruntime as ort

    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
    from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2

    metadata = ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map
    reference = json.loads(metadata["bnserve.reference_inputs"])
    infer = v2.ModelInferRequest(model_name="digits")
    columns = []
    for entry in _schema_inputs(model):
        name = entry["name"]
        values = [row[0] for row in reference[name]]
        rows = [values[i % len(values)] for i in range(batch)]
        if entry["kind"] == "categorical":
            infer.inputs.add(name=name, datatype="BYTES", shape=[1, 1])
            infer.raw_input_contents.append(_bytes_element(rows[0]))
            columns.append(pb.Column(name=name, texts=rows))
        else:
            numbers = [np.nan if v is None else v for v in rows]  # NaN: missing
            infer.inputs.add(name=name, datatype="FP32", shape=[1, 1])
            infer.raw_input_contents.append(np.array(numbers[:1], "<f4").tobytes())
            columns.append(pb.Column(name=name, numbers=numbers))
    predict_batch = pb.PredictBatchRequest(model_name="digits", columns=columns)
    return {"infer": infer.SerializeToString(), "batch": predict_batch.SerializeToString()}


def numeric_messages(model: Path, batch: int) -> dict[str, bytes]:
    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
    from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2

    row = serve.example_row(model).astype("<f4")
    infer = v2.ModelInferRequest(model_name="digits", raw_input_contents=[row.tobytes()])
    infer.inputs.add(name="x", datatype="FP32", shape=[1, row.size])
    rows = np.tile(row, (batch, 1)).astype("<f4")
    predict_batch = pb.PredictBatchRequest(model_name="digits", raw_features=rows.tobytes())
    return {"infer": infer.SerializeToString(), "batch": predict_batch.SerializeToString()}


def measure_mixed(settings: serve.BenchSettings, scratch: Path) -> bool:
    """Print the mixed rows; True when every call answered OK."""
    load_before = os.getloadavg()
    print(f"\nbuilding a mixed model and a numbers-only twin {settings.hidden} …", file=sys.stderr)
    (scratch / "mixed").mkdir(exist_ok=True)
    mixed, numeric, how = build_models(scratch / "mixed", settings.hidden)
    batch = settings.batch_examples
    messages = {MIXED: mixed_messages(mixed, batch), NUMERIC: numeric_messages(numeric, batch)}
    ports = {MIXED: serve.free_port(), NUMERIC: serve.free_port()}
    with ExitStack() as stack:
        targets: dict[str, list[serve.Target]] = {"infer": [], "batch": []}
        for label, model in ((MIXED, mixed), (NUMERIC, numeric)):
            port = ports[label]
            probe = messages[label]["infer"]
            pid = stack.enter_context(
                serve.running(
                    serve.bnserve_command(model, port, settings),
                    port,
                    serve.PATHS["infer"],
                    probe,
                )
            )
            for kind, examples in (("infer", 1), ("batch", batch)):
                body = messages[label][kind]
                answer = serve.call_once(port, serve.PATHS[kind], [body], False)[0]
                targets[kind].append(
                    serve.Target(
                        label,
                        port,
                        serve.PATHS[kind],
                        serve.frame(body),
                        examples,
                        len(serve.frame(answer)),
                        pid,
                    )
                )
        unary = {
            c: serve.interleaved_runs(targets["infer"], c, settings, scratch)
            for c in settings.concurrencies
        }
        batched = serve.interleaved_runs(
            targets["batch"], settings.throughput_concurrency, settings, scratch
        )
    print(f"\nmixed inputs (issue 26): {how}; hidden {settings.hidden}")
    print(
        f"  {MIXED}: {NUMERIC_COLUMNS} numeric + {len(LEVELS)} categorical columns "
        f"({', '.join(map(str, LEVELS))} levels); {NUMERIC}: x [N, 12]"
    )
    print(
        f"  {settings.rounds} rounds of ~{settings.duration_s} s per cell, the two servers one "
        "after the other in each (order alternating, each run after the last server settled);\n"
        "  ratio: the median over rounds of each round's mixed / numeric (q1-q3: its quartiles); "
        "rates: each model's median;\n  server CPU µs per call (process and children): medians, "
        "and numeric / mixed per round, median"
    )
    verified = True
    print(f"{'v2 ModelInfer, 1 example':<26}{_heading('req/s')}")
    for concurrency, runs in unary.items():
        row, ok = _pair_row(f"  concurrency {concurrency}", runs, 1, GOAL_REQUESTS)
        verified &= ok
        print(row)
    print(f"{f'PredictBatch, {batch}/call':<26}{_heading('ex/s')}")
    row, ok = _pair_row(
        f"  concurrency {settings.throughput_concurrency}", batched, batch, GOAL_EXAMPLES
    )
    print(row)
    verified &= ok
    print(
        "'!' marks a cell where not every call answered OK (at c=64, a few calls refused "
        "RESOURCE_EXHAUSTED by admission: 16 threads, --max-inflight 14)."
    )
    print(
        "load average (1/5/15 min) before the run: {:.2f} {:.2f} {:.2f}; after: "
        "{:.2f} {:.2f} {:.2f} ({} CPUs)".format(*load_before, *os.getloadavg(), os.cpu_count())
    )
    return verified


def _heading(unit: str) -> str:
    return (
        f"{f'mixed {unit}':>12}{f'numeric {unit}':>14}{'ratio':>7}{'q1-q3':>11}  {'goal':<12}"
        f"{'CPU µs mixed / numeric':>23}{'CPU numeric/mixed':>18}"
    )


def _pair_row(
    label: str, runs: dict[str, list[serve.LoadResult]], examples: int, goal: float
) -> tuple[str, bool]:
    """One printed row of a pair's rounds, and whether every call of every run answered OK."""
    mixed, numeric = runs[MIXED], runs[NUMERIC]
    ratios = [a.requests_per_s / b.requests_per_s for a, b in zip(mixed, numeric, strict=True)]
    cpu_ratios = [b.server_cpu_us / a.server_cpu_us for a, b in zip(mixed, numeric, strict=True)]
    q1, ratio, q3 = np.percentile(ratios, [25, 50, 75]).tolist()
    ok = all(r.verified for r in (*mixed, *numeric))
    verdict = f"≥ {goal} {'met' if ratio >= goal else 'NOT met'}"
    cpu = (
        f"{statistics.median(r.server_cpu_us for r in mixed):.0f} / "
        f"{statistics.median(r.server_cpu_us for r in numeric):.0f}"
    )
    row = (
        f"{label:<26}{statistics.median(r.requests_per_s for r in mixed) * examples:>12.0f}"
        f"{statistics.median(r.requests_per_s for r in numeric) * examples:>14.0f}"
        f"{ratio:>7.3f}{f'{q1:.2f}-{q3:.2f}':>11}{'' if ok else '!':1} {verdict:<12}"
        f"{cpu:>23}{statistics.median(cpu_ratios):>18.2f}"
    )
    return row, ok


def main(argv: list[str] | None = None) -> int:
    """python bench/serve_mixed.py [--quick]: the mixed rows alone (as bench/serve.py --mixed)."""
    return serve.main(["--mixed", *(sys.argv[1:] if argv is None else argv)])


def measure_mixed_alone(settings: serve.BenchSettings) -> int:
    serve.ensure_h2load()
    with tempfile.TemporaryDirectory(prefix="bnserve-bench-") as scratch_name:
        return 0 if measure_mixed(settings, Path(scratch_name)) else 1


if __name__ == "__main__":
    sys.exit(main())
