"""`make demo`: the whole journey on one machine, from the built-in digits to answers over gRPC.

  1. `bnserve train` on digits with batch norm             -> demo/run/ (with learning_curve.png)
  2. `bnserve export` folds it into affine ONNX weights    -> demo/model.onnx
  3. `bnserve serve` on a free loopback port, until grpc.health.v1 says SERVING
  4. the held-out test split scored one example at a time over gRPC (native Predict)
  5. accuracy, max |served - training inference path|, latency p50/p90/p99; the server stopped

Exits non-zero when a step fails, when served accuracy is below --min-accuracy, or when a served
probability differs from the training module's numpy inference path by more than --max-diff.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2, predictor_pb2_grpc
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run

REPO = Path(__file__).resolve().parents[1]
# No Prometheus endpoint for the demo's short-lived server: its default port (9090) may be taken.
DEMO_SERVER_ENV = {**os.environ, "BNSERVE_METRICS_PORT": "0", "BNSERVE_HTTP_PORT": "0"}


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains and how strictly it judges the served answers."""

    out_dir: Path  # holds run/ and model.onnx (replaced on every demo)
    target: str | None  # HOST:PORT of a running server to score instead (no train/export/serve)
    run_dir: Path | None  # the run whose held-out set is scored; None: out_dir/run
    hidden: str  # hidden layer widths, e.g. "256,256"
    epochs: int  # training epochs
    dropout: float  # inverted dropout on hidden units while training
    l2: float  # L2 penalty on weight matrices
    lr_decay: float  # learning rate multiplier after every epoch
    seed: int  # seeds the split, the initial weights and shuffling
    min_accuracy: float  # served accuracy on the held-out split must reach this
    max_diff: float  # max |served - numpy inference path| allowed on probabilities
    warmup_calls: int  # Predict calls before latency is measured (connection, first run)
    serve_deadline_s: float  # longest wait for SERVING after start, in seconds
    stop_grace_s: float  # longest wait for the server to exit after SIGTERM, in seconds


def parse_args(argv: Sequence[str]) -> DemoSettings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("demo"), help="relative to the repo")
    parser.add_argument(
        "--target",
        help="HOST:PORT of a server already running (e.g. the container): only score against it",
    )
    parser.add_argument("--run", type=Path, help="run directory to score (default OUT_DIR/run)")
    # Training's defaults (`bnserve train` with no options), so the demo shows what they give.
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--lr-decay", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=0.96)
    parser.add_argument("--max-diff", type=float, default=1e-5)
    parser.add_argument("--warmup-calls", type=int, default=20)
    parser.add_argument("--serve-deadline", type=float, default=60.0)
    parser.add_argument("--stop-grace", type=float, default=15.0)
    args = parser.parse_args(argv)
    return DemoSettings(
        out_dir=args.out_dir,
        target=args.target,
        run_dir=args.run,
        hidden=args.hidden,
        epochs=args.epochs,
        dropout=args.dropout,
        l2=args.l2,
        lr_decay=args.lr_decay,
        seed=args.seed,
        min_accuracy=args.min_accuracy,
        max_diff=args.max_diff,
        warmup_calls=args.warmup_calls,
        serve_deadline_s=args.serve_deadline,
        stop_grace_s=args.stop_grace,
    )


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


def bnserve(*args: str) -> list[str]:
    """The command line of `bnserve ARGS...` run with this interpreter."""
    return [sys.executable, "-m", "bnserve.cli", *args]


def run_step(title: str, args: list[str]) -> None:
    """Run `bnserve ARGS...` with its output shown, then how long it took."""
    print(f"\n== {title}\n$ bnserve {' '.join(args)}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(bnserve(*args), check=False)
    if completed.returncode != 0:
        raise DemoError(f"{title}: exited with code {completed.returncode}")
    print(f"({time.perf_counter() - started:.1f} s)", flush=True)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(
    channel: grpc.Channel, deadline_s: float, server: subprocess.Popen[bytes] | None = None
) -> float:
    """Poll grpc.health.v1 until SERVING; returns seconds waited.

    Raises DemoError past the deadline, or at once when `server` (if given) has exited.
    """
    health = health_pb2_grpc.HealthStub(channel)
    started = time.monotonic()
    while True:
        if server is not None and server.poll() is not None:
            raise DemoError(f"the server exited with code {server.returncode} before SERVING")
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return time.monotonic() - started
        except grpc.RpcError:
            pass  # not listening yet
        if time.monotonic() - started > deadline_s:
            raise DemoError(f"the server did not report SERVING within {deadline_s:.0f} s")
        time.sleep(0.1)


def score_one_at_a_time(
    channel: grpc.Channel, x: np.ndarray, warmup_calls: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predict each row of x (R, F) float32 in its own call.

    Returns the served probabilities (R, C) float32 and each call's round trip (R,) in ms,
    measured after `warmup_calls` calls on the first rows (not counted).
    """
    stub = predictor_pb2_grpc.PredictorStub(channel)
    for row in x[:warmup_calls]:
        stub.Predict(predictor_pb2.PredictRequest(features=row.tolist()), timeout=10)
    probabilities, latencies_ms = [], []
    for row in x:
        request = predictor_pb2.PredictRequest(features=row.tolist())
        started = time.perf_counter_ns()
        response = stub.Predict(request, timeout=10)
        latencies_ms.append((time.perf_counter_ns() - started) / 1e6)
        probabilities.append(response.probabilities)
    return np.asarray(probabilities, dtype=np.float32), np.asarray(latencies_ms)


def score_heldout(
    target: str,
    run_dir: Path,
    settings: DemoSettings,
    server: subprocess.Popen[bytes] | None = None,
) -> list[str]:
    """Wait for SERVING at target, score the run's held-out set, print the figures.

    Returns the problems found (empty when accuracy and the served-vs-numpy difference pass).
    """
    run = load_run(run_dir)
    x = run.heldout_x.astype(np.float32)
    # The reference sees exactly the float32 values sent over the wire, in float64 arithmetic.
    reference = predict(run.params, run.meta, x.astype(np.float64))
    with grpc.insecure_channel(target) as channel:
        waited = wait_until_serving(channel, settings.serve_deadline_s, server)
        print(f"SERVING after {waited:.1f} s", flush=True)
        served, latencies_ms = score_one_at_a_time(channel, x, settings.warmup_calls)

    accuracy = float(np.mean(served.argmax(axis=1) == run.heldout_y))
    max_diff = float(np.max(np.abs(served.astype(np.float64) - reference)))
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    print(f"\n== {len(x)} held-out examples, one Predict call each")
    print(f"served accuracy              {accuracy:.4f}  (need >= {settings.min_accuracy})")
    print(f"max |served - numpy path|    {max_diff:.2e}  (need <= {settings.max_diff:.0e})")
    print(f"latency ms p50 / p90 / p99   {p50:.3f} / {p90:.3f} / {p99:.3f}", flush=True)
    problems = []
    if accuracy < settings.min_accuracy:
        problems.append(f"accuracy {accuracy:.4f} < {settings.min_accuracy}")
    if not max_diff <= settings.max_diff:
        problems.append(f"max difference {max_diff:.2e} > {settings.max_diff:.0e}")
    return problems


def stop_server(server: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM, then wait for a graceful exit; returns the exit code (kills past the grace)."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise DemoError(f"the server did not exit within {grace_s:.0f} s of SIGTERM") from None
    return server.returncode


def serve_and_score(settings: DemoSettings, run_dir: Path, model_path: Path) -> list[str]:
    """Start `bnserve serve` on a free loopback port, score the held-out set, stop it."""
    port = free_loopback_port()
    args = ["serve", "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port)]
    log_path = settings.out_dir / "server.log"
    print(f"\n== serve on 127.0.0.1:{port} (log: {log_path})\n$ bnserve {' '.join(args)}")
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            bnserve(*args), stdout=log, stderr=subprocess.STDOUT, env=DEMO_SERVER_ENV
        )
    try:
        problems = score_heldout(f"127.0.0.1:{port}", run_dir, settings, server)
    except BaseException:
        stop_server(server, settings.stop_grace_s)
        print(log_path.read_text(errors="replace")[-2000:], file=sys.stderr)
        raise
    exit_code = stop_server(server, settings.stop_grace_s)
    print(f"server stopped by SIGTERM, exit code {exit_code}")
    if exit_code != 0:
        problems.append(f"server exit code {exit_code} after SIGTERM")
    return problems


def train_and_export(settings: DemoSettings, run_dir: Path, model_path: Path) -> None:
    # A demo starts from nothing: an old run would be resumed, an old model refused.
    shutil.rmtree(run_dir, ignore_errors=True)
    model_path.unlink(missing_ok=True)
    run_step(
        "train on digits with batch norm",
        [
            "train",
            "--out", str(run_dir),
            "--data", "digits",
            "--hidden", settings.hidden,
            "--epochs", str(settings.epochs),
            "--dropout", str(settings.dropout),
            "--l2", str(settings.l2),
            "--lr-decay", str(settings.lr_decay),
            "--seed", str(settings.seed),
            "--no-checkpoints",  # ~2 MB an epoch; the demo does not resume
        ],
    )  # fmt: skip
    run_step(
        "export: fold batch norm into the affine layers",
        ["export", str(run_dir), "--out", str(model_path)],
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    os.chdir(REPO)  # paths print as the README shows them: demo/run, demo/model.onnx
    run_dir = settings.run_dir or settings.out_dir / "run"
    model_path = settings.out_dir / "model.onnx"
    started = time.perf_counter()
    try:
        if settings.target:
            print(f"== score the held-out set of {run_dir} on {settings.target}", flush=True)
            problems = score_heldout(settings.target, run_dir, settings)
        else:
            settings.out_dir.mkdir(parents=True, exist_ok=True)
            train_and_export(settings, run_dir, model_path)
            problems = serve_and_score(settings, run_dir, model_path)
        if problems:
            raise DemoError("; ".join(problems))
    except DemoError as error:
        print(f"\ndemo: FAILED: {error}", file=sys.stderr)
        return 1
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    if not settings.target:
        print(f"left behind: {run_dir} (with learning_curve.png) and {model_path};")
        print("`make serve` serves that model on 127.0.0.1:50051")
    return 0


if __name__ == "__main__":
    sys.exit(main())
