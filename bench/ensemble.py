"""onnxruntime latency of an ensemble of k folded MLPs in one graph (export/ensemble_graph.py):
grouped Convs vs batched MatMuls vs parallel branches vs block-diagonal Gemms (every layout of
export/ensemble_graph.py, side by side), against one member alone, for k = 3 and 5.

Members are 64→128→128→10 with batch norm and relu (bench/export.py's network), folded; weights
are random with trained-like scales (latency does not depend on the values). Per call with a
single example, and per example at batch 64; rounds alternate between the graphs so machine
noise hits all alike; each figure is the median over rounds. Sessions are opened as the server
opens them (server/models/model.py: ORT_ENABLE_ALL, sequential, no spinning), 1 intra-op thread.
The 1-minute load average before and after is printed: on a shared machine the figures are
indicative.

    .venv/bin/python bench/ensemble.py [--rounds 7] [--calls 3000] [--k 3 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/export.py).
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bnserve.export.ensemble_graph import LAYOUTS, build_ensemble_model  # noqa: E402
from bnserve.export.fold import FoldedNetwork, fold_params  # noqa: E402
from bnserve.export.graph import build_folded_model  # noqa: E402
from bnserve.export.network import NetworkSpec  # noqa: E402
from bnserve.server.models.model import SessionThreads, _open_session  # noqa: E402

BATCH = 64


def _export_bench() -> ModuleType:
    """bench/export.py, loaded by path: its folder is kept off sys.path (its name is `export`)."""
    spec = importlib.util.spec_from_file_location("bench_export", _BENCH_DIR / "export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


EXPORT_BENCH = _export_bench()
LAYER_SIZES: tuple[int, ...] = EXPORT_BENCH.LAYER_SIZES  # the members: bench/export.py's network


def member(seed: int) -> FoldedNetwork:
    """A folded 64→128→128→10 network with batch norm (bench/export.py's random parameters)."""
    features, *hidden, classes = LAYER_SIZES
    spec = NetworkSpec(features, tuple(hidden), classes, "relu", True, 1e-5, "classification")
    return fold_params(EXPORT_BENCH.random_params(seed), spec)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return _open_session(model.SerializeToString(), "bench", SessionThreads(1, 1))


def seconds_per_call(run: ort.InferenceSession, x: np.ndarray, calls: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of `calls` calls in a row; with 1 intra-op thread and no
    spinning the CPU time is the call's own work, which other processes inflate far less."""
    feeds = {"x": x}
    run.run(None, feeds)  # warm-up
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        run.run(None, feeds)
    return (time.perf_counter() - start) / calls, (time.process_time() - start_cpu) / calls


def measure(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, rounds: int, calls: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per call for each session, rounds interleaved."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, run in sessions.items():
            samples[name].append(seconds_per_call(run, x, calls))
    return {
        name: (
            statistics.median(wall for wall, _ in values),
            statistics.median(cpu for _, cpu in values),
        )
        for name, values in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--k", type=int, nargs="+", default=[3, 5])
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    members = [member(seed) for seed in range(max(args.k))]
    graphs = {"one member": build_folded_model(members[0])}
    for k in args.k:
        for layout in LAYOUTS:
            graphs[f"k={k} {layout}"] = build_ensemble_model(members[:k], layout=layout)
    sessions = {name: session(model) for name, model in graphs.items()}
    x = np.random.default_rng(1).normal(8, 4, (BATCH, LAYER_SIZES[0])).astype(np.float32)
    single = measure(sessions, x[:1], args.rounds, args.calls)
    batched = measure(sessions, x, args.rounds, max(1, args.calls // 8))
    print(
        f"ensemble: onnxruntime {ort.__version__}, members {'→'.join(map(str, LAYER_SIZES))} "
        f"(batch norm folded, relu), 1 intra-op thread, median of {args.rounds} interleaved "
        f"rounds; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        "  wall: µs per call; CPU: this process's CPU µs per call (what a busy machine inflates "
        "least); × one: against one member in the same column; goal k = 5 single ≤ 2× one"
    )
    print(
        f"  {'graph':<16} {'nodes':>5} {'single wall':>12} {'× one':>6} {'single CPU':>11} "
        f"{'× one':>6} {'batch 64 wall/example':>22} {'× one':>6}"
    )
    (one_wall, one_cpu), (batch_wall, _) = single["one member"], batched["one member"]
    for name, model in graphs.items():
        (wall, cpu), (batch, _) = single[name], batched[name]
        print(
            f"  {name:<16} {len(model.graph.node):>5} {wall * 1e6:>12.2f} {wall / one_wall:>6.2f} "
            f"{cpu * 1e6:>11.2f} {cpu / one_cpu:>6.2f} {batch / BATCH * 1e6:>22.3f} "
            f"{batch / batch_wall:>6.2f}"
        )


if __name__ == "__main__":
    main()
