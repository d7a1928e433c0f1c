"""What any Python server pays per call before the transport: onnxruntime, then bnserve's handler.

bench/serve.py measures whole gRPC calls against a bare echo server. This bench measures, in one
process pinned to one core and with no transport at all, the two costs a Python server adds to
the echo server's per-call CPU:
  1. InferenceSession.run of an exported digits model (bnserve's own session options), for a
     tiny model (64→16→10) and the benchmark's model (64→256→256→10), at 1 and 64 rows;
  2. bnserve's native handlers called directly (parse the request bytes, check, score, build
     and serialize the answer): Predict with one example, PredictBatch with 64 raw rows.
Each figure is the median over rounds of the mean µs per call.

    .venv/bin/python bench/serving_floor.py [--rounds 7] [--calls 3000] [--cpu 0]
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

import numpy as np

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


class _Context:
    """The little of grpc.ServicerContext the handlers use on the success path."""

    def time_remaining(self) -> None:
        return None


def per_call_us(cells: list[Cell], rounds: int) -> list[float]:
    """Median over `rounds` of each cell's mean wall µs per call; rounds interleave the cells so
    drift in the machine's speed hits them alike."""
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
    return [statistics.median(cell_means) for cell_means in means]


def exported_model(directory: Path, hidden: tuple[int, ...]) -> Path:
    """Train a digits MLP with batch norm for one epoch and export it (the real path)."""
    from export.exporter import ExportSettings, export_run
    from training.config import TrainConfig
    from training.train import train

    name = "-".join(map(str, hidden))
    config = TrainConfig(hidden=hidden, epochs=1, seed=0)
    run_dir = Path(train(config, directory / f"run-{name}", progress=False).run_dir)
    return export_run(ExportSettings(run_dir=run_dir, out=directory / f"digits-{name}.onnx")).out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000, help="calls per round")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU to run on")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    from server.admission import InflightLimiter
    from server.dataplane import DataPlane
    from server.gen.bnserve.v1 import predictor_pb2 as pb
    from server.model import Model, SessionThreads
    from server.repository import ModelRepository
    from server.servable import Servable
    from server.servicers.native import PredictorServicer

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
                cells.append(Cell(f"InferenceSession.run, {shape}", x.shape[0], call, calls))

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
        results = per_call_us(cells, args.rounds)

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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
