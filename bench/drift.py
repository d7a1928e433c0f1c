"""What drift monitoring costs per scoring run, and why it uses a second session.

On a real digits model (trained 2 epochs, exported), side by side in one run (rounds alternate
between the variants, the median is reported), for one example and for 64:
  default     the served session, outputs probabilities and label (monitoring off)
  by name     ONE session whose graph also outputs the pre-activations, asked only for the two
              task outputs: what the unmonitored path would cost if the server kept one session
              and requested outputs by name (onnxruntime cannot fuse Gemm + Relu when the Gemm's
              result is a graph output)
  layers      that session asked for everything (a monitored run)
  monitored   layers + DriftMonitor.observe: the whole monitored predict
and bnserve.server.models.model.Model.predict as the server calls it, drift off and on (the
default sample of 0.1 of the runs, and every run).

    .venv/bin/python bench/drift.py [--rounds 7] [--calls 3000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnserve.server.drift.monitor import DriftMonitor, DriftSettings, parse_reference  # noqa: E402
from bnserve.server.modelfile.wire import with_graph_outputs  # noqa: E402
from bnserve.server.models.model import Model, SessionThreads  # noqa: E402

HIDDEN = (256, 256)  # training's default widths
OUTPUTS = ["probabilities", "label"]


def build_model(directory: Path) -> Path:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.train import train

    run_dir = Path(train(TrainConfig(hidden=HIDDEN, epochs=2, seed=0), directory / "run",
                         progress=False).run_dir)  # fmt: skip
    return export_run(ExportSettings(run_dir=run_dir, out=directory / "digits.onnx")).out


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()  # as server/models/model.py opens them
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def variants(model: Path, rows: np.ndarray) -> dict[str, Callable[[], object]]:
    model_bytes = model.read_bytes()
    metadata = ort.InferenceSession(model_bytes).get_modelmeta().custom_metadata_map
    reference = parse_reference(
        metadata["bnserve.drift"], json.loads(metadata["bnserve.feature_names"])
    )
    default = session(model_bytes)
    layer_names = [layer.output for layer in reference.layers]
    widths = [(layer.output, layer.width) for layer in reference.layers]
    layered = session(with_graph_outputs(model_bytes, widths))
    monitor = DriftMonitor(reference, DriftSettings(), warn=False)
    feed = {"x": rows}

    def monitored() -> object:
        outputs = layered.run(OUTPUTS + layer_names, feed)
        monitor.observe(rows, outputs[2:])
        return outputs[:2]

    models = {
        label: Model.load(model, "digits", "1", SessionThreads(), drift)
        for label, drift in [
            ("predict, drift off", None),
            ("predict, sample 0.1", DriftSettings(sample=0.1)),
            ("predict, sample 1", DriftSettings(sample=1.0)),
        ]
    }
    return {
        "default": lambda: default.run(OUTPUTS, feed),
        "by name": lambda: layered.run(OUTPUTS, feed),
        "layers": lambda: layered.run(OUTPUTS + layer_names, feed),
        "monitored": monitored,
        **{label: (lambda m=served: m.predict(rows)) for label, served in models.items()},
    }


def measure(calls_by_variant: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict:
    for call in calls_by_variant.values():
        for _ in range(200):
            call()
    timings: dict[str, list[float]] = {name: [] for name in calls_by_variant}
    for _ in range(rounds):
        for name, call in calls_by_variant.items():
            start = time.perf_counter()
            for _ in range(calls):
                call()
            timings[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(values) for name, values in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 500 calls")
    args = parser.parse_args(argv)
    rounds, calls = (3, 500) if args.quick else (args.rounds, args.calls)
    with tempfile.TemporaryDirectory(prefix="bnserve-bench-drift-") as scratch:
        print(f"training and exporting a digits model {HIDDEN} (2 epochs) …", file=sys.stderr)
        model = build_model(Path(scratch))
        heldout = np.load(Path(scratch) / "run" / "heldout.npz")["x"].astype(np.float32)
        results = {
            batch: measure(variants(model, heldout[:batch]), rounds, max(calls // batch, 50))
            for batch in (1, 64)
        }
    print(
        f"\nbench/drift.py: 64→{'→'.join(map(str, HIDDEN))}→10, one onnxruntime thread, "
        f"median of {rounds} interleaved rounds (µs per run; ratio over default)"
    )
    print(f"{'':<20}" + "".join(f"{f'{batch} example(s)':>22}" for batch in results))
    for name in results[1]:
        cells = [
            f"{figures[name]:>12.1f}{figures[name] / figures['default']:>9.2f}×"
            for figures in results.values()
        ]
        print(f"{name:<20}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
