"""onnxruntime latency of an ensemble of k folded MLPs in one graph (export/ensemble_graph.py):
grouped Convs vs batched MatMuls vs parallel branches vs block-diagonal Gemms (every layout of
export/ensemble_graph.py, side by side), against one member alone, for k = 3 and 5.

Members are 64→128→128→10 with batch norm and relu (bench/export.py's network), folded; weights
are random with trained-like scales (latency does not depend on the values). Per call with a
single example, and per example at batch 64; many short rounds alternate between the graphs
(the order reversing each round) so machine noise hits all alike; each ratio is the median over
rounds of the graph's time over one member's in the same round (single-example times on this
VM move by up to 1.5× between runs, which a ratio of medians over a few long rounds passed on).
Sessions are opened as the server opens them (server/models/model.py: ORT_ENABLE_ALL,
sequential, no spinning), 1 intra-op thread.
The 1-minute load average before and after is printed: on a shared machine the figures are
indicative.

    .venv/bin/python bench/ensemble.py [--rounds 101] [--calls 300] [--k 3 5]
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


def seconds_per_call(run: ort.InferenceSession, x: np.ndarray, calls: int) -> float:
    feeds = {"x": x}
    run.run(None, feeds)  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        run.run(None, feeds)
    return (time.perf_counter() - start) / calls


def measure(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, rounds: int, calls: int
) -> dict[str, list[float]]:
    """Seconds per call of each session in each round: every round runs every session once, in
    an order that reverses from one round to the next."""
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            samples[name].append(seconds_per_call(sessions[name], x, calls))
    return samples


def ratios(samples: dict[str, list[float]], name: str, base: str) -> tuple[float, float, float]:
    """(median, q1, q3) over rounds of `name`'s time over `base`'s in the same round."""
    per_round = [mine / theirs for mine, theirs in zip(samples[name], samples[base], strict=True)]
    q1, median, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
    return median, q1, q3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--calls", type=int, default=300)
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
        f"(batch norm folded, relu), 1 intra-op thread, {args.rounds} interleaved rounds of "
        f"{args.calls} calls (batch 64: {max(1, args.calls // 8)}); load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        "  µs: the median over rounds; × one: the median over rounds of the graph's time over one"
        " member's in the same round (q1-q3: its quartiles); goal: k = 5, one example, ≤ 2× one"
    )
    print(
        f"  {'graph':<16} {'nodes':>5} {'single µs':>10} {'× one':>6} {'q1-q3':>11} "
        f"{'batch 64 µs/example':>20} {'× one':>6} {'q1-q3':>11}"
    )
    for name, model in graphs.items():
        one, one_q1, one_q3 = ratios(single, name, "one member")
        many, many_q1, many_q3 = ratios(batched, name, "one member")
        print(
            f"  {name:<16} {len(model.graph.node):>5} "
            f"{statistics.median(single[name]) * 1e6:>10.2f} {one:>6.2f} "
            f"{one_q1:>5.2f}-{one_q3:<5.2f} "
            f"{statistics.median(batched[name]) / BATCH * 1e6:>20.3f} {many:>6.2f} "
            f"{many_q1:>5.2f}-{many_q3:<5.2f}"
        )


if __name__ == "__main__":
    main()
