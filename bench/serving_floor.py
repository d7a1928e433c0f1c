"""What any Python server pays per call before the transport: onnxruntime, then bnserve's handler.

bench/serve.py measures whole gRPC calls against a bare echo server. This bench measures, in one
process pinned to one core and with no transport at all, the two costs a Python server adds to
the echo server's per-call CPU:
  1. Model.predict (onnxruntime run) of an exported digits model (bnserve's own options), for a
     tiny model (64→16→10) and the benchmark's model (64→256→256→10), at 1 and 64 rows;
  2. bnserve's native handlers called directly (parse the request bytes, check, score, build
     and serialize the answer): Predict with one example, PredictBatch with 64 raw rows; and
     check_features + Servable.run of one example with batching off and on;
  3. ways to run the same session on the benchmark's model, side by side: `run` as bnserve did
     before (a RunOptions made per call), `run` with one shared RunOptions, the session's C++
     binding directly (skipping the Python-side checks of feed names that bnserve's own checks
     already cover), io binding with preallocated outputs (copied out, since a batch's callers
     read their rows after the next run may have started), and run_with_ort_values; as a
     ratio to bnserve's `Model.predict` as it is now.
Each figure is the median over rounds of the mean µs per call.

    .venv/bin/python bench/serving_floor.py [--rounds 7] [--calls 3000] [--cpu 0] [--short]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported in main, after the CPU is pinned
    from bnserve.server.models.servable import Servable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH_ROWS = 64


@dataclass(frozen=True)
class Cell:
    """One measured row: `call` scores `rows` examples; timed `calls` times per round."""

    label: str
    rows: int
    call: Callable[[], object]
    calls: int


def _check_and_run(servable: Servable, x: np.ndarray) -> list[np.ndarray]:
    """What the data plane does to one example before and around the model, minus admission."""
    servable.model.check_features(x)
    return servable.run(x)


def run_path_variants(model: object, x: np.ndarray) -> dict[str, Callable[[], object]]:
    """The ways to score x with model's session; each returns the outputs as numpy arrays."""
    import onnxruntime as ort

    session = model._session  # type: ignore[attr-defined]
    names = list(model.output_names)  # type: ignore[attr-defined]
    feed = {"x": x}
    shared = ort.RunOptions()
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    outputs = [np.empty((x.shape[0], 10), np.float32), np.empty((x.shape[0],), np.int64)]
    for name, out in zip(names, outputs, strict=True):
        binding.bind_output(name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)

    def io_bound() -> list[np.ndarray]:
        binding.bind_cpu_input("x", x)
        session.run_with_iobinding(binding, shared)
        return [out.copy() for out in outputs]

    def ort_values() -> list[np.ndarray]:
        values = session.run_with_ort_values(names, {"x": ort.OrtValue.ortvalue_from_numpy(x)})
        return [value.numpy() for value in values]

    return {
        "Model.predict (bnserve now)": partial(model.predict, x),  # type: ignore[attr-defined]
        "run, RunOptions per call (before)": partial(session.run, names, feed),
        "run, one shared RunOptions": partial(session.run, names, feed, shared),
        "C++ binding run, shared RunOptions": partial(session._sess.run, names, feed, shared),
        "io binding, preallocated, copied out": io_bound,
        "run_with_ort_values": ort_values,
    }


class _Context:
    """The little of grpc.ServicerContext the handlers use on the success path."""

    def time_remaining(self) -> None:
        return None


def per_call_us(cells: list[Cell], rounds: int) -> tuple[list[float], list[float]]:
    """Median and best (least) over `rounds` of each cell's mean wall µs per call; rounds
    interleave the cells so drift in the machine's speed hits them alike (the best round is the
    steadier figure on a loaded machine)."""
    for cell in cells:  # warm-up
        for _ in range(cell.calls // 10):
            cell.call()
    means: list[list[float]] = [[] for _ in cells]
    for _ in range(rounds):
        for cell, cell_means in zip(cells, means, strict=True):
            started = time.perf_counter()
            for _ in range(cell.calls):
                cell.call()
            cell_means.append((time.perf_counter() - started) / cell.calls * 1e6)
    return [statistics.median(m) for m in means], [min(m) for m in means]


def exported_model(directory: Path, hidden: tuple[int, ...]) -> Path:
    """Train a digits MLP with batch norm for one epoch and export it (the real path)."""
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.train import train

    name = "-".join(map(str, hidden))
    config = TrainConfig(hidden=hidden, epochs=1, seed=0)
    run_dir = Path(train(config, directory / f"run-{name}", progress=False).run_dir)
    return export_run(ExportSettings(run_dir=run_dir, out=directory / f"digits-{name}.onnx")).out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000, help="calls per round")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU to run on")
    parser.add_argument("--short", action="store_true", help="9 rounds of 300 calls: a smoke run")
    args = parser.parse_args(argv)
    if args.short:
        args.rounds, args.calls = 9, 300
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
    from bnserve.server.grpc.servicers.native import PredictorServicer
    from bnserve.server.models.model import Model, SessionThreads
    from bnserve.server.models.repository import ModelRepository
    from bnserve.server.models.servable import Servable
    from bnserve.server.plane.admission import InflightLimiter
    from bnserve.server.plane.batching import DynamicBatcher
    from bnserve.server.plane.dataplane import DataPlane

    rng = np.random.default_rng(0)
    batch = (rng.random((BATCH_ROWS, 64)) * 16).astype(np.float32)
    one = batch[:1]
    batch_calls = max(1, args.calls // 8)
    cells = []
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as scratch:
        models = {}
        for hidden in ((16,), (256, 256)):
            path = exported_model(Path(scratch), hidden)
            models[hidden] = Model.load(path, "digits", "1", SessionThreads(1, 1))
        for hidden, model in models.items():
            shape = "→".join(map(str, (64, *hidden, 10)))
            for x, calls in ((one, args.calls), (batch, batch_calls)):
                call = partial(model.predict, x)
                cells.append(Cell(f"Model.predict (onnxruntime), {shape}", x.shape[0], call, calls))

        model = models[(256, 256)]
        repository = ModelRepository()
        repository.swap("digits", "1", Servable(model))
        servicer = PredictorServicer(DataPlane(repository, InflightLimiter(64)))
        context = _Context()
        predict_bytes = pb.PredictRequest(
            model_name="digits", features=one[0].tolist()
        ).SerializeToString()
        batch_bytes = pb.PredictBatchRequest(
            model_name="digits", raw_features=batch.tobytes()
        ).SerializeToString()

        def predict() -> bytes:
            request = pb.PredictRequest.FromString(predict_bytes)
            return servicer.Predict(request, context).SerializeToString()

        def predict_batch() -> bytes:
            request = pb.PredictBatchRequest.FromString(batch_bytes)
            return servicer.PredictBatch(request, context).SerializeToString()

        cells.append(Cell("bnserve Predict handler, 64→256→256→10", 1, predict, args.calls))
        cells.append(
            Cell("bnserve PredictBatch handler (raw rows)", BATCH_ROWS, predict_batch, batch_calls)
        )
        # A lone call with batching on pays the batcher's idle check and hand-on, nothing else.
        batcher = DynamicBatcher(model.predict, max_batch_size=64, max_delay_s=0.0, max_queue=64)
        for label, servable in (
            ("check + Servable.run, batching off", Servable(model)),
            ("check + Servable.run, batching on (a lone call)", Servable(model, batcher)),
        ):
            cells.append(Cell(label, 1, partial(_check_and_run, servable, one), args.calls))
        variants = []
        for x, calls in ((one, args.calls), (batch, batch_calls)):
            reference = model.predict(x)
            for label, call in run_path_variants(model, x).items():
                for got, expected in zip(call(), reference, strict=True):  # same answers
                    np.testing.assert_array_equal(got, expected)
                variants.append(Cell(label, x.shape[0], call, calls))
        medians, bests = per_call_us(cells + variants, args.rounds)
        results, variant_results = medians[: len(cells)], medians[len(cells) :]
        variant_bests = bests[len(cells) :]

    print(
        f"bench/serving_floor.py: one process on CPU {args.cpu}, no transport; "
        f"median of {args.rounds} interleaved rounds of {args.calls} calls "
        f"({batch_calls} for 64-row calls)"
    )
    print(f"{'':44}{'rows':>5}{'µs/call':>10}{'examples/s':>13}")
    for cell, us in zip(cells, results, strict=True):
        print(f"{cell.label:44}{cell.rows:>5}{us:>10.1f}{cell.rows / us * 1e6:>13,.0f}")
    print(
        "\nA call costs at least the echo server's per-call CPU (bench/serve.py prints it) plus "
        "the handler row above."
    )
    print(
        "\nonnxruntime run paths, 64→256→256→10 (ratio: µs per call over Model.predict's; "
        "median and best round)"
    )
    print(f"{'':44}{'rows':>5}{'median':>9}{'ratio':>7}{'best':>9}{'ratio':>7}")
    half = len(variants) // 2
    for start in (0, half):
        now, best_now = variant_results[start], variant_bests[start]
        for i in range(start, start + half):
            us, best = variant_results[i], variant_bests[i]
            print(
                f"{variants[i].label:44}{variants[i].rows:>5}{us:>9.1f}{us / now:>7.2f}"
                f"{best:>9.1f}{best / best_now:>7.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
