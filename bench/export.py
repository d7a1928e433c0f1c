"""onnxruntime latency of the folded vs the unfolded model (64→128→128→10, batch norm, relu),
and of a PyTorch export (BatchNormalization nodes kept) vs `bnserve import` of it.

Per call with a single example, and per example at batch 64, measured side by side in one run:
rounds alternate between the two models so machine noise hits both alike; each figure is the
median over rounds. Weights are random with trained-like scales (latency does not depend on the
values). Also shows that onnxruntime's own optimizer leaves the BatchNormalization nodes in place.

    .venv/bin/python bench/export.py [--rounds 7] [--calls 4000] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# This file is bench/export.py: run as a script, its own folder comes first on sys.path and
# `import export` would find this file instead of the package. Drop that entry first.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bnserve.export.fold import fold_params  # noqa: E402
from bnserve.export.graph import build_folded_model, build_unfolded_model  # noqa: E402
from bnserve.export.importer import ImportSettings, import_model  # noqa: E402
from bnserve.export.network import NetworkSpec  # noqa: E402

LAYER_SIZES = (64, 128, 128, 10)
BATCH = 64


@dataclass(frozen=True)
class BenchSettings:
    rounds: int  # alternating measurement rounds per model; the median is reported
    calls: int  # session.run calls per round for single examples (batch 64: calls // 8)
    threads: int  # onnxruntime intra-op threads


def random_params(seed: int = 0) -> dict[str, np.ndarray]:
    """64→128→128→10 parameters with batch norm, in the params.npz layout."""
    rng = np.random.default_rng(seed)
    features, *hidden, classes = LAYER_SIZES
    params = {"input.mean": rng.normal(8, 4, features), "input.std": rng.uniform(1, 6, features)}
    widths = [features, *hidden]
    for index in range(1, len(widths)):
        fan_in, width = widths[index - 1], widths[index]
        prefix = f"hidden{index}"
        params[f"{prefix}.W"] = rng.normal(0, np.sqrt(2 / fan_in), (fan_in, width))
        params[f"{prefix}.gamma"] = rng.uniform(0.5, 1.5, width)
        params[f"{prefix}.beta"] = rng.normal(0, 0.3, width)
        params[f"{prefix}.running_mean"] = rng.normal(0, 0.5, width)
        params[f"{prefix}.running_var"] = rng.uniform(0.3, 2.0, width)
    params["output.W"] = rng.normal(0, np.sqrt(1 / widths[-1]), (widths[-1], classes))
    params["output.b"] = rng.normal(0, 0.1, classes)
    return params


def make_session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """A CPU session at ORT_ENABLE_ALL (onnxruntime's default level) with `threads` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def optimized_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of the graph onnxruntime runs after its ORT_ENABLE_ALL graph optimizations."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3  # its "hardware-specific model" warning does not apply
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def seconds_per_call(session: ort.InferenceSession, x: np.ndarray, calls: int) -> float:
    feeds = {session.get_inputs()[0].name: x}  # "x", or a foreign export's own input name
    session.run(None, feeds)  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, feeds)
    return (time.perf_counter() - start) / calls


def measure(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, settings: BenchSettings, calls: int
) -> dict[str, float]:
    """Median seconds per call for each session, rounds interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(settings.rounds):
        for name, session in sessions.items():
            samples[name].append(seconds_per_call(session, x, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    settings = BenchSettings(rounds=args.rounds, calls=args.calls, threads=args.threads)

    params = random_params()
    features, *hidden, classes = LAYER_SIZES
    spec = NetworkSpec(
        feature_count=features,
        hidden_sizes=tuple(hidden),
        output_count=classes,
        activation="relu",
        batchnorm=True,
        epsilon=1e-5,
        task="classification",
    )
    models = {
        "folded": build_folded_model(fold_params(params, spec)),
        "unfolded": build_unfolded_model(params, spec),
    }
    sessions = {name: make_session(model, settings.threads) for name, model in models.items()}

    rng = np.random.default_rng(1)
    x_batch = rng.normal(8, 4, (BATCH, LAYER_SIZES[0])).astype(np.float32)
    single = measure(sessions, x_batch[:1], settings, settings.calls)
    batched = measure(sessions, x_batch, settings, max(1, settings.calls // 8))

    print(
        f"export: onnxruntime {ort.__version__}, {'→'.join(map(str, LAYER_SIZES))} MLP with "
        f"batch norm, {settings.threads} intra-op thread(s), "
        f"median of {settings.rounds} interleaved rounds"
    )
    for name in models:
        print(f"  {name:<9} after ORT_ENABLE_ALL: {' '.join(optimized_ops(models[name]))}")
    print(f"  {'model':<10} {'single example µs/call':>24} {'batch 64 µs/example':>21}")
    for name in models:
        print(f"  {name:<10} {single[name] * 1e6:>24.2f} {batched[name] / BATCH * 1e6:>21.3f}")
    print(
        f"  {'unfolded/folded':<10} {single['unfolded'] / single['folded']:>19.2f}×"
        f" {batched['unfolded'] / batched['folded']:>20.2f}×"
    )
    imported_torch_rows(settings)


TORCH_EXPORT = _BENCH_DIR.parent / "tests" / "export" / "fixtures" / "torch_digits.onnx"


def imported_torch_rows(settings: BenchSettings) -> None:
    """The PyTorch export (tests/export/fixtures/torch_digits.onnx, BatchNormalization nodes
    kept) against what `bnserve import` makes of it, side by side like the table above."""
    with tempfile.TemporaryDirectory() as folder:
        folded_path = Path(folder) / "imported.onnx"
        import_model(ImportSettings(source=TORCH_EXPORT, out=folded_path, task="classification"))
        models = {
            "imported": onnx.load(str(folded_path)),
            "torch": onnx.load(str(TORCH_EXPORT)),
        }
    sessions = {name: make_session(model, settings.threads) for name, model in models.items()}
    features = models["imported"].graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x_batch = np.random.default_rng(2).uniform(0, 16, (BATCH, features)).astype(np.float32)
    single = measure(sessions, x_batch[:1], settings, settings.calls)
    batched = measure(sessions, x_batch, settings, max(1, settings.calls // 8))
    print(
        "import: the PyTorch export of a digits MLP (Sub/Div, 64→32→16→10, two BatchNorm1d, "
        "TorchScript exporter, logits out) vs `bnserve import` of it (which also computes "
        "Softmax and ArgMax)"
    )
    for name in models:
        print(f"  {name:<9} after ORT_ENABLE_ALL: {' '.join(optimized_ops(models[name]))}")
    print(f"  {'model':<10} {'single example µs/call':>24} {'batch 64 µs/example':>21}")
    for name in models:
        print(f"  {name:<10} {single[name] * 1e6:>24.2f} {batched[name] / BATCH * 1e6:>21.3f}")
    print(
        f"  {'torch/imported':<10} {single['torch'] / single['imported']:>20.2f}×"
        f" {batched['torch'] / batched['imported']:>20.2f}×"
    )


if __name__ == "__main__":
    main()
