"""Benchmark the server against the transport's limit, with a compiled load generator.

In one run, the same h2load load (prebuilt length-prefixed gRPC bodies, `content-type:
application/grpc`, `te: trailers`) goes to
  (a) a bare sync grpcio echo server: same request bytes in, same-size response out;
  (a') a minimal sync grpcio + onnxruntime Predict server: parse, one InferenceSession.run,
       answer — no checks, no admission, no metrics: the floor for any Python server doing
       this work, so the ratio to it shows what bnserve's own serving path costs;
  (b) bnserve native Predict (drift monitoring on, the default, and off);
  (c) bnserve v2 ModelInfer (raw_input_contents, as tritonclient sends);
  (d) bnserve with batching off and on, flags otherwise identical, for the default model and for
      a large one (--large-hidden, 1024,1024,1024: a run that costs more than the call);
single-example unary calls at concurrency 1, 8 and 64: requests/s, p50/p99 latency, and each as a
ratio to the echo server and to the minimal server; batching on over off. Then
  (e) placement (bench/serve_placement.py): one and two processes, unpinned, pinned by taskset
      and `--cpu-affinity auto`, requests/s and server CPU per call side by side;
  (f) mixed inputs (bench/serve_mixed.py): a model of 8 numeric + 4 categorical columns next to
      a numbers-only one of 12 inputs, v2 ModelInfer and PredictBatch, ratios beside the goals;
then PredictBatch (64 examples a call) and PredictStream (many examples per stream) in
examples/s over unary, and the server's overhead over a bare onnxruntime run of the same example.

Servers run pinned to one core, h2load to the other (taskset), except in (e).
h2load cannot see trailers, so every call's success is checked another way: each body is
first sent once with a grpcio client (status OK, response size recorded), and after the run
the DATA bytes h2load received
must equal (successful requests) × (that response's framed size) — a failed gRPC call answers
with trailers only and no DATA, so any failure shows up as missing bytes.

Usage: python bench/serve.py [--duration 2] [--rounds 3] [--quick] [--hidden 256,256]
                             [--large-hidden 1024,1024,1024] [--concurrencies 1,8,64]
                             [--placement (the placement rows (e) alone)]
                             [--mixed (the mixed-input rows (f) alone; 21 rounds of 1 s
                              unless --rounds / --duration say otherwise)]
                             [--capture (capture's cost rows alone, more rounds)]
(installs h2load with apt-get when run as root and it is missing)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
ECHO_PATH = "/bench.Echo/Call"
ECHO_LABEL = "bare grpcio echo"
MINIMAL_LABEL = "minimal grpcio + onnxruntime"
MINIMAL_POOL_LABEL = "minimal, bnserve's pool"  # server/grpc/executor.py's MessageFirstExecutor
PREDICT_LABEL = "native Predict"
DRIFT_OFF_LABEL = "native Predict, drift off"
BATCH_DRIFT_OFF_LABEL = "PredictBatch, drift off"
CAPTURE_FULL_LABEL = "native Predict, capture 1.0"
CAPTURE_TENTH_LABEL = "native Predict, capture 0.1"
SHADOW_LABEL = "native Predict, capture+shadow"
MIXED_ROUNDS, MIXED_DURATION_S = 21, 1.0  # --mixed's defaults (bench/serve_mixed.py)
PATHS = {
    "predict": "/bnserve.v1.Predictor/Predict",
    "infer": "/inference.GRPCInferenceService/ModelInfer",
    "batch": "/bnserve.v1.Predictor/PredictBatch",
    "stream": "/bnserve.v1.Predictor/PredictStream",
}


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark measures and how long."""

    duration_s: float = 2.0  # rough length of one measured h2load run
    rounds: int = 3  # interleaved runs per cell; the median is reported
    concurrencies: tuple[int, ...] = (1, 8, 64)  # concurrent streams for the unary rows
    workers: int = 16  # gRPC thread pool of every server under test (echo included)
    batch_examples: int = 64  # examples per PredictBatch call
    stream_examples: int = 1000  # examples per PredictStream stream
    throughput_concurrency: int = 8  # concurrency of the PredictBatch / PredictStream rows
    bare_runs: int = 20000  # InferenceSession.run calls timed for the overhead row
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of the digits model (training's default)
    large_hidden: tuple[int, ...] = (1024, 1024, 1024)  # a model whose run costs more than a call
    server_cpu: str = "0"  # taskset CPU list of the server
    load_cpu: str = "1"  # taskset CPU list of h2load


@dataclass(frozen=True)
class Target:
    """One server endpoint and a body to post to it."""

    label: str
    port: int
    path: str
    body: bytes  # length-prefixed gRPC message(s)
    examples_per_call: int
    framed_response_bytes: int  # DATA bytes one successful call answers with
    server_pid: int  # whose CPU time (with its child processes') is charged to the calls
    load_cpu: str = ""  # taskset CPU list of h2load for this target; "": settings.load_cpu


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    succeeded: int
    verified: bool  # every call answered its full response (see module docstring)
    server_cpu_us: float  # server process CPU time (user + system) per call, in µs
    load_cpu_us: float = 0.0  # h2load's own CPU time (user + system) per call, in µs


def frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing h2load (nghttp2-client) with apt-get …", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True)
        found = shutil.which("h2load")
    if not found:
        raise SystemExit("bench/serve.py needs h2load: apt-get install nghttp2-client")
    return found


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if shutil.which("taskset") else command


# ---------------------------------------------------------------------------- model and bodies


def build_model(directory: Path, hidden: tuple[int, ...]) -> Path:
    """Train a digits MLP with batch norm for a couple of epochs and export it (the real path)."""
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.train import train

    config = TrainConfig(hidden=hidden, epochs=2, seed=0)
    run_dir = Path(train(config, directory / "run", progress=False).run_dir)
    return export_run(ExportSettings(run_dir=run_dir, out=directory / "digits.onnx")).out


def example_row(model_path: Path) -> np.ndarray:
    import onnxruntime as ort

    metadata = ort.InferenceSession(str(model_path)).get_modelmeta().custom_metadata_map
    return np.asarray(json.loads(metadata["bnserve.reference_inputs"])[0], dtype=np.float32)


def request_messages(row: np.ndarray, settings: BenchSettings) -> dict[str, list[bytes]]:
    """Serialized request message(s) per call kind."""
    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
    from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2

    infer = v2.ModelInferRequest(model_name="digits", raw_input_contents=[row.tobytes()])
    infer.inputs.add(name="x", datatype="FP32", shape=[1, row.size])
    batch = np.tile(row, (settings.batch_examples, 1)).astype("<f4")
    predict = pb.PredictRequest(model_name="digits", features=row).SerializeToString()
    return {
        "predict": [predict],
        "infer": [infer.SerializeToString()],
        "batch": [
            pb.PredictBatchRequest(
                model_name="digits", raw_features=batch.tobytes()
            ).SerializeToString()
        ],
        "stream": [predict] * settings.stream_examples,
    }


def call_once(port: int, path: str, messages: list[bytes], streaming: bool) -> list[bytes]:
    """Send messages with a real grpcio client; raises on any non-OK status."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        if streaming:
            call = channel.stream_stream(path)
            return list(call(iter(messages), timeout=60))
        return [channel.unary_unary(path)(messages[0], timeout=60)]


# ---------------------------------------------------------------------------- servers


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of a process and of its live child processes
    (a --processes supervisor's serving processes), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        total += sum(process_cpu_s(int(child)) for child in children.read_text().split())
    return total


@contextmanager
def running(
    command: list[str], port: int, path: str, probe: bytes, ready_line: str = ""
) -> Iterator[int]:
    """Start a server process, wait until `path` answers `probe` (and, if given, ready_line is
    in its log), yield its pid, stop it. Its stderr is drained all along."""
    import threading

    import grpc

    # No metrics HTTP port: a fixed default port may be taken on a shared machine.
    environment = {**os.environ, "BNSERVE_METRICS_PORT": "0", "BNSERVE_HTTP_PORT": "0"}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment
    )
    lines: list[str] = []
    drain = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    drain.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                drain.join(5)
                raise SystemExit(f"server exited early: {' '.join(command)}\n{''.join(lines)}")
            try:
                call_once(port, path, [probe], streaming=False)
                if not ready_line or any(ready_line in line for line in list(lines)):
                    break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise SystemExit(f"no {ready_line!r} from {' '.join(command)}\n{''.join(lines)}")
            time.sleep(0.2)
        yield process.pid  # taskset execs the server, so this is the server's own pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        drain.join(5)
        process.stderr.close()


def bnserve_command(
    model: Path,
    port: int,
    settings: BenchSettings,
    *,
    batching: bool = False,
    workers: int = 0,
    processes: int = 1,
    drift: bool = True,
    capture: tuple[Path, float] | None = None,
) -> list[str]:
    """bnserve serving model as "digits"; workers 0: settings.workers; capture: (--capture-dir,
    --capture-sample). Pinned to the server CPU with one process; several are left to
    --cpu-affinity (bench/serve_placement.py)."""
    workers = workers or settings.workers
    command = [
        sys.executable,
        "-m",
        "bnserve.server",
        "--model",
        str(model),
        "--name",
        "digits",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--max-inflight",
        str(workers - 2),
        "--log-level",
        "INFO" if processes > 1 else "WARNING",
        "--batching" if batching else "--no-batching",
        "--processes",
        str(processes),
        "--drift" if drift else "--no-drift",
    ]
    if capture is not None:
        command += ["--capture-dir", str(capture[0]), "--capture-sample", str(capture[1])]
    return pinned(settings.server_cpu, command) if processes == 1 else command


def shadow_directory(model: Path, directory: Path) -> Path:
    """A model directory serving `model` as version 1 with a copy of it as version 2, its
    shadow (server/models/shadow.py): every call is scored twice."""
    for version in ("1", "2"):
        (directory / version).mkdir(parents=True)
        shutil.copyfile(model, directory / version / "model.onnx")
    (directory / "shadow").write_text("2\n")
    return directory


def batching_workers(settings: BenchSettings) -> int:
    """gRPC threads of the batching on/off pair: a sync server batches only the calls it holds
    threads for, so both get room for every concurrent call."""
    return max(settings.workers, max(settings.concurrencies) + 8)


def _answer_size(answer: bytes) -> int:
    """A Predict answer's size without its request id: bnserve answers the id it made for an
    id-less call (server/plane/request_ids.py), which the minimal server does not make."""
    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb

    response = pb.PredictResponse.FromString(answer)
    response.ClearField("id")
    return response.ByteSize()


def reference_command(mode: str, port: int, settings: BenchSettings, *options: str) -> list[str]:
    """This script running one of its reference servers (echo-server, minimal-server), pinned
    to the server CPU with the same thread pool as bnserve."""
    return pinned(
        settings.server_cpu,
        [
            sys.executable,
            __file__,
            mode,
            "--port",
            str(port),
            "--workers",
            str(settings.workers),
            *options,
        ],
    )


def serve_until_sigterm(handler: Any, port: int, workers: int, message_first: bool = False) -> None:
    """Serve one generic handler with a sync grpcio server of `workers` threads until SIGTERM
    (message_first: in bnserve's own pool, server/grpc/executor.py, instead of grpcio's).

    SIGTERM is blocked before the server's threads start (they inherit the mask) and taken with
    sigwait: no Python handler, so none that could deadlock on a lock the main thread holds."""
    import signal
    from concurrent import futures

    import grpc

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if message_first:
        from bnserve.server.grpc.executor import MessageFirstExecutor

        pool: futures.ThreadPoolExecutor = MessageFirstExecutor(workers, 8, 10.0, 256)
    else:
        pool = futures.ThreadPoolExecutor(max_workers=workers)
    server = grpc.server(pool)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.sigwait({signal.SIGTERM})
    server.stop(0)


def echo_server(port: int, workers: int, response: bytes) -> None:
    """A bare sync grpcio server: raw request bytes in, fixed response bytes out."""
    import grpc

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: response)},
    )
    serve_until_sigterm(handler, port, workers)


def minimal_server(model: Path, port: int, workers: int, message_first: bool = False) -> None:
    """The least a Python gRPC server can do to score one example: parse the request, run
    onnxruntime (same session options as bnserve), answer. No checks of any kind."""
    import grpc

    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
    from bnserve.server.models.model import Model, SessionThreads

    loaded = Model.load(model, "digits", "1", SessionThreads(1, 1))
    class_names = loaded.card.class_names

    def predict(request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        x = np.array(request.features[:], dtype=np.float32).reshape(1, -1)
        probabilities, labels = loaded.predict(x)
        label = int(labels[0])
        return pb.PredictResponse(
            model_name=request.model_name,
            model_version="1",
            probabilities=probabilities[0].tolist(),
            label=label,
            class_name=class_names[label],
        )

    handler = grpc.method_handlers_generic_handler(
        "bnserve.v1.Predictor",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(
                predict,
                request_deserializer=pb.PredictRequest.FromString,
                response_serializer=pb.PredictResponse.SerializeToString,
            )
        },
    )
    serve_until_sigterm(handler, port, workers, message_first)


# ---------------------------------------------------------------------------- load


def _h2load_command(
    target: Target, concurrency: int, requests: int, settings: BenchSettings, body: Path, log: Path
) -> list[str]:
    """concurrency = connections × streams per connection (at most 8 connections)."""
    connections = min(concurrency, 8)
    streams = max(1, concurrency // connections)
    return pinned(
        target.load_cpu or settings.load_cpu,
        [
            ensure_h2load(),
            "-n",
            str(requests),
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-d",
            str(body),
            *GRPC_HEADERS,
            "--log-file",
            str(log),
            f"http://127.0.0.1:{target.port}{target.path}",
        ],
    )


def h2load(
    target: Target, concurrency: int, requests: int, settings: BenchSettings, scratch: Path
) -> LoadResult:
    """Send exactly `requests` calls with h2load; latency percentiles from its per-request log."""
    body = scratch / "body.bin"
    body.write_bytes(target.body)
    log = scratch / "requests.tsv"
    log.unlink(missing_ok=True)
    command = _h2load_command(target, concurrency, requests, settings, body, log)
    return run_h2load(command, log, requests, target.server_pid, target.framed_response_bytes)


def run_h2load(
    command: list[str], log: Path, requests: int, server_pid: int, response_bytes: int
) -> LoadResult:
    """Run an h2load command that sends exactly `requests` calls and logs each to `log`; its
    rate, latency percentiles, server and h2load CPU per call, and whether every call answered
    status 200 with `response_bytes` of body."""
    cpu_before = process_cpu_s(server_pid)
    load_before = children_cpu_s()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu_per_call_us = (process_cpu_s(server_pid) - cpu_before) / requests * 1e6
    load_cpu_per_call_us = (children_cpu_s() - load_before) / requests * 1e6
    succeeded = int(re.search(r"requests: .*?(\d+) succeeded", output).group(1))
    data_bytes = int(re.search(r"\((\d+)\) data", output).group(1))
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2)
    statuses_ok = rows.shape[0] == requests and bool(np.all(rows[:, 1] == 200))
    latencies_ms = rows[:, 2] / 1000.0
    return LoadResult(
        requests_per_s=rate,
        p50_ms=float(np.percentile(latencies_ms, 50)),
        p99_ms=float(np.percentile(latencies_ms, 99)),
        succeeded=succeeded,
        verified=statuses_ok and succeeded == requests and data_bytes == requests * response_bytes,
        server_cpu_us=cpu_per_call_us,
        load_cpu_us=load_cpu_per_call_us,
    )


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's waited-for children: h2load's, per run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Load = Callable[[Any, int, int, "BenchSettings", Path], LoadResult]  # h2load or the REST one


def calibrated_requests(
    target: Any, concurrency: int, settings: BenchSettings, scratch: Path, load: Load
) -> int:
    """Warm the target up and size a run to last about duration_s at its current rate."""
    warm = load(target, concurrency, max(200, concurrency * 10), settings, scratch)
    return max(concurrency * 20, int(warm.requests_per_s * settings.duration_s))


def interleaved(
    targets: list[Any],
    concurrency: int,
    settings: BenchSettings,
    scratch: Path,
    load: Load | None = None,
) -> dict[str, LoadResult]:
    """Each target (anything with a `label` that `load` runs; default h2load over gRPC)
    `rounds` times, alternating, so load from other processes hits all alike; the median run
    (by requests/s) of each target is kept."""
    runs = interleaved_runs(targets, concurrency, settings, scratch, load)
    medians = {}
    for label, results in runs.items():
        ordered = sorted(results, key=lambda r: r.requests_per_s)
        median = ordered[len(ordered) // 2]
        medians[label] = replace(median, verified=all(r.verified for r in results))
    return medians


def interleaved_runs(
    targets: list[Any],
    concurrency: int,
    settings: BenchSettings,
    scratch: Path,
    load: Load | None = None,
) -> dict[str, list[LoadResult]]:
    """`interleaved`'s runs, every round of every target: runs[label][i] is round i's, so
    the targets' runs of one round (close in time) can be compared pair by pair."""
    load = load or h2load
    sizes = {t.label: calibrated_requests(t, concurrency, settings, scratch, load) for t in targets}
    runs: dict[str, list[LoadResult]] = {t.label: [] for t in targets}
    for round_number in range(settings.rounds):
        # every other round in reverse, so no target always follows the same one
        for target in targets if round_number % 2 == 0 else targets[::-1]:
            runs[target.label].append(
                load(target, concurrency, sizes[target.label], settings, scratch)
            )
            settle(getattr(target, "server_pid", 0))
    return runs


def settle(pid: int, timeout_s: float = 2.0) -> None:
    """Wait until server `pid` has finished what a run left it (a capture writer's queue, a
    shadow's backlog, a drift batch): under 5 % of a CPU for 50 ms, so that it does not take
    the shared server CPU from the next target's run. At most timeout_s; pid 0: no wait."""
    if not pid:
        return
    deadline = time.monotonic() + timeout_s
    try:
        before = process_cpu_s(pid)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            after = process_cpu_s(pid)
            if after - before < 0.0025:
                return
            before = after
    except (FileNotFoundError, ProcessLookupError):
        return


@dataclass(frozen=True)
class BareRun:
    """onnxruntime alone, same session options as the server, in a process on the server CPU."""

    p50_ms: float  # one example per run
    p99_ms: float
    batch_examples_per_s: float  # runs of batch_examples rows


def bare_run(model: Path, row: np.ndarray, runs: int, batch_examples: int) -> BareRun:
    from bnserve.server.models.model import Model, SessionThreads

    loaded = Model.load(model, "digits", "1", SessionThreads(1, 1))
    x = row.reshape(1, -1)
    for _ in range(200):
        loaded.predict(x)
    timings = np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        start = clock()
        loaded.predict(x)
        timings[i] = clock() - start
    batch = np.tile(x, (batch_examples, 1))
    batch_runs = max(10, runs // batch_examples)
    start = clock()
    for _ in range(batch_runs):
        loaded.predict(batch)
    batch_rate = batch_runs * batch_examples / (clock() - start)
    return BareRun(
        float(np.percentile(timings, 50) * 1e3), float(np.percentile(timings, 99) * 1e3), batch_rate
    )


# ---------------------------------------------------------------------------- report


BATCHING_OFF = "batching off"
BATCHING_ON = "batching on"
LARGE = "large model"


def measure(settings: BenchSettings) -> int:
    ensure_h2load()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bnserve-bench-") as scratch_name, ExitStack() as stack:
        scratch = Path(scratch_name)
        models = {}
        for key, hidden in (("default", settings.hidden), ("large", settings.large_hidden)):
            print(f"training and exporting a digits model {hidden} (2 epochs) …", file=sys.stderr)
            (scratch / key).mkdir()
            models[key] = build_model(scratch / key, hidden)
        model = models["default"]
        row = example_row(model)
        messages = request_messages(row, settings)
        predict_probe = messages["predict"][0]
        wide = batching_workers(settings)
        names = ["echo", "minimal", "minimal pool", "bnserve", "nodrift", "off", "on"]
        names += ["large off", "large on", "capture 1.0", "capture 0.1", "shadow"]
        shadowed = shadow_directory(model, scratch / "shadowed")
        ports = {name: free_port() for name in names}
        large = models["large"]
        servers = {  # name → (command, log line when ready)
            "bnserve": (bnserve_command(model, ports["bnserve"], settings), ""),
            "nodrift": (bnserve_command(model, ports["nodrift"], settings, drift=False), ""),
            **{
                f"capture {share}": (
                    bnserve_command(
                        model,
                        ports[f"capture {share}"],
                        settings,
                        capture=(scratch / f"capture-{share}", share),
                    ),
                    "",
                )
                for share in (1.0, 0.1)
            },
            "shadow": (
                bnserve_command(
                    shadowed, ports["shadow"], settings, capture=(scratch / "capture-shadow", 1.0)
                ),
                "",
            ),
            "off": (bnserve_command(model, ports["off"], settings, workers=wide), ""),
            "on": (bnserve_command(model, ports["on"], settings, workers=wide, batching=True), ""),
            "large off": (bnserve_command(large, ports["large off"], settings, workers=wide), ""),
            "large on": (
                bnserve_command(large, ports["large on"], settings, workers=wide, batching=True),
                "",
            ),
        }
        pids = {}
        for name, (command, ready_line) in servers.items():
            pids[name] = stack.enter_context(
                running(command, ports[name], PATHS["predict"], predict_probe, ready_line)
            )
        answers = {
            kind: call_once(ports["bnserve"], PATHS[kind], messages[kind], kind == "stream")
            for kind in PATHS
        }
        assert len(answers["stream"]) == settings.stream_examples
        framed = {kind: sum(len(frame(a)) for a in replies) for kind, replies in answers.items()}
        echo_response = answers["predict"][0]  # echo answers a same-size response
        pids["echo"] = stack.enter_context(
            running(
                reference_command(
                    "echo-server", ports["echo"], settings, "--response-hex", echo_response.hex()
                ),
                ports["echo"],
                ECHO_PATH,
                predict_probe,
            )
        )
        pids["minimal"] = stack.enter_context(
            running(
                reference_command(
                    "minimal-server", ports["minimal"], settings, "--model", str(model)
                ),
                ports["minimal"],
                PATHS["predict"],
                predict_probe,
            )
        )
        pids["minimal pool"] = stack.enter_context(
            running(
                reference_command(
                    "minimal-server", ports["minimal pool"], settings, "--model", str(model),
                    "--message-first",
                ),
                ports["minimal pool"],
                PATHS["predict"],
                predict_probe,
            )
        )  # fmt: skip
        minimal_answer = call_once(ports["minimal"], PATHS["predict"], [predict_probe], False)[0]
        assert _answer_size(minimal_answer) == _answer_size(answers["predict"][0]), (
            "minimal server's answer size"
        )

        def target(
            label: str, server: str, kind: str, body: bytes, examples: int = 1, load_cpu: str = ""
        ) -> Target:
            if server == "echo":
                response_bytes = len(frame(echo_response))
            elif server.startswith("minimal"):  # its own answer: no request id (_answer_size)
                response_bytes = len(frame(minimal_answer))
            elif server.startswith("large"):  # its own answer: a label 0 is not on the wire
                response_bytes = len(
                    frame(call_once(ports[server], PATHS[kind], [body[5:]], False)[0])
                )
            else:
                response_bytes = framed[kind]
            path = ECHO_PATH if server == "echo" else PATHS[kind]
            return Target(
                label, ports[server], path, body, examples, response_bytes, pids[server], load_cpu
            )

        predict_body = frame(predict_probe)
        unary_targets = [
            target(ECHO_LABEL, "echo", "predict", predict_body),
            target(MINIMAL_LABEL, "minimal", "predict", predict_body),
            target(PREDICT_LABEL, "bnserve", "predict", predict_body),
            target(DRIFT_OFF_LABEL, "nodrift", "predict", predict_body),
            target("v2 ModelInfer", "bnserve", "infer", frame(messages["infer"][0])),
            target(f"Predict, {BATCHING_OFF}", "off", "predict", predict_body),
            target(f"Predict, {BATCHING_ON}", "on", "predict", predict_body),
            target(f"{LARGE}, {BATCHING_OFF}", "large off", "predict", predict_body),
            target(f"{LARGE}, {BATCHING_ON}", "large on", "predict", predict_body),
            target(MINIMAL_POOL_LABEL, "minimal pool", "predict", predict_body),
            target(CAPTURE_FULL_LABEL, "capture 1.0", "predict", predict_body),
            target(CAPTURE_TENTH_LABEL, "capture 0.1", "predict", predict_body),
            target(SHADOW_LABEL, "shadow", "predict", predict_body),
        ]
        stream_body = b"".join(frame(m) for m in messages["stream"])
        throughput_targets = [
            target(f"PredictBatch ({settings.batch_examples}/call)", "bnserve", "batch",
                   frame(messages["batch"][0]), settings.batch_examples),
            target(BATCH_DRIFT_OFF_LABEL, "nodrift", "batch", frame(messages["batch"][0]),
                   settings.batch_examples),
            target(f"PredictStream ({settings.stream_examples}/stream)", "bnserve", "stream",
                   stream_body, settings.stream_examples),
            target("native Predict (unary)", "bnserve", "predict", predict_body),
        ]  # fmt: skip
        unary = {
            c: interleaved(unary_targets, c, settings, scratch) for c in settings.concurrencies
        }
        throughput = interleaved(
            throughput_targets, settings.throughput_concurrency, settings, scratch
        )
        bare = subprocess.run(
            pinned(
                settings.server_cpu,
                [
                    sys.executable,
                    __file__,
                    "bare-run",
                    "--model",
                    str(model),
                    "--runs",
                    str(settings.bare_runs),
                ],
            ),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        examples_per_call = {t.label: t.examples_per_call for t in throughput_targets}
        report(settings, unary, throughput, examples_per_call, BareRun(**json.loads(bare)))
        stack.close()  # the servers stop before the placement and REST rows
        from serve_mixed import measure_mixed
        from serve_placement import measure_placement
        from serve_rest import measure_rest

        placement_ok = measure_placement(model, row, settings, scratch)
        rest_ok = measure_rest(model, row, settings, scratch)
        mixed_ok = measure_mixed(settings, scratch)
    print(
        "\nload average (1/5/15 min) before the run: {:.2f} {:.2f} {:.2f}; after: "
        "{:.2f} {:.2f} {:.2f} ({} CPUs)".format(*load_before, *os.getloadavg(), os.cpu_count())
    )
    results = [r for rows in unary.values() for r in rows.values()]
    results += list(throughput.values())
    return 0 if placement_ok and rest_ok and mixed_ok and all(r.verified for r in results) else 1


def _ratio_table(
    title: str, rows: dict[int, dict[str, LoadResult]], pairs: list[tuple[str, str, str]]
) -> None:
    """One line per (label, numerator, denominator): requests/s of both and their ratio."""
    concurrencies = list(rows)
    print(f"\n{title}")
    print(f"{'':<34}" + "".join(f"{f'concurrency {c}':>26}" for c in concurrencies))
    print(f"{'':<34}" + f"{'req/s':>9}{'over':>9}{'ratio':>8}" * len(concurrencies))
    for label, numerator, denominator in pairs:
        cells = []
        for c in concurrencies:
            top, bottom = rows[c][numerator], rows[c][denominator]
            mark = " " if top.verified and bottom.verified else "!"
            cells.append(
                f"{top.requests_per_s:>9.0f}{bottom.requests_per_s:>9.0f}"
                f"{top.requests_per_s / bottom.requests_per_s:>7.2f}{mark}"
            )
        print(f"{label:<34}" + "".join(cells))


def report(
    settings: BenchSettings,
    unary: dict[int, dict[str, LoadResult]],
    throughput: dict[str, LoadResult],
    examples_per_call: dict[str, int],
    bare: BareRun,
) -> None:
    print(
        f"\nbench/serve.py: server on CPU {settings.server_cpu}, h2load on {settings.load_cpu}, "
        f"{settings.workers} gRPC threads ({batching_workers(settings)} for the batching pair); "
        f"median of {settings.rounds} interleaved runs of ~{settings.duration_s} s per cell; "
        f"model 64→{'→'.join(map(str, settings.hidden))}→10, large model "
        f"64→{'→'.join(map(str, settings.large_hidden))}→10"
    )
    print("\nsingle-example unary calls (ratio: requests/s over the bare grpcio echo server)")
    labels = list(next(iter(unary.values())))
    print(f"{'':<30}" + "".join(f"{f'concurrency {c}':>33}" for c in settings.concurrencies))
    print(f"{'server':<30}" + f"{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>8}" * len(unary))
    for label in labels:
        cells = []
        for c in settings.concurrencies:
            result, echo = unary[c][label], unary[c][ECHO_LABEL]
            mark = " " if result.verified else "!"
            cells.append(
                f"{result.requests_per_s:>8.0f}{mark}{result.p50_ms:>8.2f}{result.p99_ms:>8.2f}"
                f"{result.requests_per_s / echo.requests_per_s:>8.2f}"
            )
        print(f"{label:<30}" + "".join(cells))
    print(f"\nrequests/s as a ratio to the {MINIMAL_LABEL} server (what bnserve's own path costs)")
    print(f"{'server':<30}" + "".join(f"{f'c={c}':>9}" for c in settings.concurrencies))
    for label in labels[2:6]:
        cells = [
            f"{unary[c][label].requests_per_s / unary[c][MINIMAL_LABEL].requests_per_s:>9.2f}"
            for c in settings.concurrencies
        ]
        print(f"{label:<30}" + "".join(cells))
    pool_rows = [unary[c][MINIMAL_POOL_LABEL] for c in settings.concurrencies]
    base_rows = [unary[c][MINIMAL_LABEL] for c in settings.concurrencies]
    cells = [
        f"{pool.requests_per_s / base.requests_per_s:>9.2f}"
        for pool, base in zip(pool_rows, base_rows, strict=True)
    ]
    print(f"{'  with bnserve pool over grpcio':<30}" + "".join(cells))
    print("\nserver CPU time per call, µs (ratio: echo's CPU per call over this server's)")
    print(f"{'server':<30}" + "".join(f"{f'c={c} µs':>11}{'ratio':>7}" for c in unary))
    for label in labels:
        cells = [
            f"{unary[c][label].server_cpu_us:>11.0f}"
            f"{unary[c][ECHO_LABEL].server_cpu_us / unary[c][label].server_cpu_us:>7.2f}"
            for c in settings.concurrencies
        ]
        print(f"{label:<30}" + "".join(cells))
    print("\ndrift monitoring on (the default) over off, requests/s (goal ≥ 0.95)")
    print(f"{'':<30}" + "".join(f"{f'c={c}':>9}" for c in settings.concurrencies))
    cells = [
        f"{unary[c][PREDICT_LABEL].requests_per_s / unary[c][DRIFT_OFF_LABEL].requests_per_s:>9.2f}"
        for c in settings.concurrencies
    ]
    print(f"{'native Predict':<30}" + "".join(cells))
    batch_label = next(label for label in throughput if label.startswith("PredictBatch ("))
    batch_ratio = (
        throughput[batch_label].requests_per_s / throughput[BATCH_DRIFT_OFF_LABEL].requests_per_s
    )
    print(f"{f'PredictBatch, c={settings.throughput_concurrency}':<30}{batch_ratio:>9.2f}")
    _ratio_table(
        "batching on over off (same flags otherwise; ratio: on's requests/s over off's)",
        unary,
        [
            ("default model", f"Predict, {BATCHING_ON}", f"Predict, {BATCHING_OFF}"),
            (LARGE, f"{LARGE}, {BATCHING_ON}", f"{LARGE}, {BATCHING_OFF}"),
        ],
    )
    _ratio_table(
        "capture's cost (ratio: requests/s with --capture-dir over without, same run)",
        unary,
        CAPTURE_PAIRS,
    )
    unary_rate = throughput["native Predict (unary)"].requests_per_s
    print(
        f"\nthroughput at concurrency {settings.throughput_concurrency} "
        "(ratio: examples/s over unary native Predict in the same runs)"
    )
    for label, result in throughput.items():
        examples = result.requests_per_s * examples_per_call.get(label, 1)
        mark = "" if result.verified else "  (!)"
        print(
            f"{label:<30}{examples:>10.0f} examples/s   ratio {examples / unary_rate:>6.1f}{mark}"
        )
    print(
        f"{f'InferenceSession.run, {settings.batch_examples} rows':<30}"
        f"{bare.batch_examples_per_s:>10.0f} examples/s   (onnxruntime alone: the ceiling)"
    )
    served = unary[1]["native Predict"]
    print("\nserver overhead over a bare onnxruntime InferenceSession.run of the same example")
    print(f"{'':<30}{'p50 ms':>8}{'p99 ms':>8}")
    print(f"{'InferenceSession.run':<30}{bare.p50_ms:>8.3f}{bare.p99_ms:>8.3f}")
    print(f"{'native Predict, concurrency 1':<30}{served.p50_ms:>8.3f}{served.p99_ms:>8.3f}")
    print(f"{'overhead':<30}{served.p50_ms - bare.p50_ms:>8.3f}{served.p99_ms - bare.p99_ms:>8.3f}")
    print("\n'!' marks a cell where not every call answered OK (checked by response bytes).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    echo = sub.add_parser("echo-server")
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--workers", type=int, required=True)
    echo.add_argument("--response-hex", required=True)
    minimal = sub.add_parser("minimal-server")
    minimal.add_argument("--model", type=Path, required=True)
    minimal.add_argument("--port", type=int, required=True)
    minimal.add_argument("--workers", type=int, required=True)
    minimal.add_argument("--message-first", action="store_true", help="bnserve's thread pool")
    bare = sub.add_parser("bare-run")
    bare.add_argument("--model", type=Path, required=True)
    bare.add_argument("--runs", type=int, required=True)
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds per measured run (default {BenchSettings.duration_s}; --mixed: "
        f"{MIXED_DURATION_S})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"interleaved runs per cell (default {BenchSettings.rounds}; --mixed: {MIXED_ROUNDS})",
    )
    parser.add_argument(
        "--hidden",
        default="256,256",
        help="hidden widths of the benchmark's model (default 256,256)",
    )
    parser.add_argument(
        "--large-hidden",
        default="1024,1024,1024",
        help="hidden widths of the large model of the batching rows (default 1024,1024,1024)",
    )
    parser.add_argument("--quick", action="store_true", help="2 s per row, fewer bare runs")
    parser.add_argument(
        "--concurrencies",
        default="1,8,64",
        help="concurrent streams of the unary and placement rows (default 1,8,64)",
    )
    parser.add_argument(
        "--placement",
        action="store_true",
        help="only the placement rows: 1 and 2 processes, unpinned / taskset / --cpu-affinity auto",
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="only the mixed-input rows: 8 numeric + 4 categorical columns vs 12 numeric inputs",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="only capture's cost: Predict with capture off, 1.0, 0.1 and with a shadow",
    )
    args = parser.parse_args(argv)
    if args.mode == "echo-server":
        echo_server(args.port, args.workers, bytes.fromhex(args.response_hex))
        return 0
    if args.mode == "minimal-server":
        minimal_server(args.model, args.port, args.workers, args.message_first)
        return 0
    if args.mode == "bare-run":
        model = Path(args.model)
        result = bare_run(model, example_row(model), args.runs, BenchSettings.batch_examples)
        print(json.dumps(dataclasses.asdict(result)))
        return 0
    hidden = tuple(int(width) for width in args.hidden.split(","))
    large = tuple(int(width) for width in args.large_hidden.split(","))
    concurrencies = tuple(int(c) for c in args.concurrencies.split(","))
    # --mixed judges a goal at the edge of the run-to-run spread: many short rounds by default
    default_duration, default_rounds = (
        (MIXED_DURATION_S, MIXED_ROUNDS)
        if args.mixed
        else (BenchSettings.duration_s, BenchSettings.rounds)
    )
    settings = BenchSettings(
        duration_s=default_duration if args.duration is None else args.duration,
        rounds=default_rounds if args.rounds is None else args.rounds,
        hidden=hidden,
        large_hidden=large,
        concurrencies=concurrencies,
    )
    if args.quick:
        settings = replace(settings, duration_s=0.7, rounds=1, bare_runs=5000)
    if args.placement:
        return measure_placement_alone(settings)
    if args.mixed:
        from serve_mixed import measure_mixed_alone

        return measure_mixed_alone(settings)
    if args.capture:
        return measure_capture_alone(settings)
    return measure(settings)


CAPTURE_PAIRS = [
    ("sample 1.0 (goal ≥ 0.90)", CAPTURE_FULL_LABEL, PREDICT_LABEL),
    ("sample 0.1 (goal ≥ 0.97)", CAPTURE_TENTH_LABEL, PREDICT_LABEL),
    ("shadow, sample 1.0 (goal ≥ 0.80)", SHADOW_LABEL, PREDICT_LABEL),
    ("shadow over capture alone", SHADOW_LABEL, CAPTURE_FULL_LABEL),
]


def measure_capture_alone(settings: BenchSettings) -> int:
    """`--capture`: the digits model served with capture off, at 1.0 and 0.1, and with a
    shadow. Each of the three is measured in its own pair with the server without capture,
    interleaved at each concurrency (two targets a round: a pair's runs are close in time, and
    many short rounds, e.g. `--rounds 21 --duration 1`, steady the median); each pair's ratio
    and both servers' CPU per call."""
    ensure_h2load()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bnserve-bench-") as scratch_name, ExitStack() as stack:
        scratch = Path(scratch_name)
        print(
            f"training and exporting a digits model {settings.hidden} (2 epochs) …", file=sys.stderr
        )
        (scratch / "model").mkdir()
        model = build_model(scratch / "model", settings.hidden)
        messages = request_messages(example_row(model), settings)
        probe = messages["predict"][0]
        shadowed = shadow_directory(model, scratch / "shadowed")
        servers = {
            PREDICT_LABEL: bnserve_command(model, free_port(), settings),
            CAPTURE_FULL_LABEL: bnserve_command(
                model, free_port(), settings, capture=(scratch / "capture-1.0", 1.0)
            ),
            CAPTURE_TENTH_LABEL: bnserve_command(
                model, free_port(), settings, capture=(scratch / "capture-0.1", 0.1)
            ),
            SHADOW_LABEL: bnserve_command(
                shadowed, free_port(), settings, capture=(scratch / "capture-shadow", 1.0)
            ),
        }
        targets: dict[str, Target] = {}
        body = frame(probe)
        answer_bytes: int | None = None
        for label, command in servers.items():
            port = int(command[command.index("--port") + 1])
            pid = stack.enter_context(running(command, port, PATHS["predict"], probe))
            if answer_bytes is None:
                answer_bytes = len(frame(call_once(port, PATHS["predict"], [probe], False)[0]))
            targets[label] = Target(label, port, PATHS["predict"], body, 1, answer_bytes, pid, "")
        baseline = targets[PREDICT_LABEL]
        pairs = {  # label → concurrency → (with, without)
            label: {
                c: (results[label], results[PREDICT_LABEL])
                for c in settings.concurrencies
                for results in [interleaved([baseline, target], c, settings, scratch)]
            }
            for label, target in targets.items()
            if label != PREDICT_LABEL
        }
    print(
        f"\nbench/serve.py --capture: server on CPU {settings.server_cpu}, h2load on "
        f"{settings.load_cpu}; each row a pair with the server without capture, median of "
        f"{settings.rounds} interleaved runs of ~{settings.duration_s} s per cell; model "
        f"64→{'→'.join(map(str, settings.hidden))}→10"
    )
    goals = {CAPTURE_FULL_LABEL: 0.90, CAPTURE_TENTH_LABEL: 0.97, SHADOW_LABEL: 0.80}
    print("\ncapture's cost (ratio: requests/s with --capture-dir over without, in one pair)")
    print(f"{'':<46}" + "".join(f"{f'concurrency {c}':>26}" for c in settings.concurrencies))
    print(f"{'':<46}" + f"{'req/s':>9}{'without':>9}{'ratio':>8}" * len(settings.concurrencies))
    verified = True
    for label, by_c in pairs.items():
        cells = []
        for with_, without in by_c.values():
            verified &= with_.verified and without.verified
            mark = " " if with_.verified and without.verified else "!"
            ratio = with_.requests_per_s / without.requests_per_s
            cells.append(
                f"{with_.requests_per_s:>9.0f}{without.requests_per_s:>9.0f}{ratio:>7.2f}{mark}"
            )
        print(f"{f'{label} (goal ≥ {goals[label]:.2f})':<46}" + "".join(cells))
    print("\nserver CPU µs per call, with / without (process and children), the same runs")
    print(f"{'':<46}" + "".join(f"{f'c={c}':>14}" for c in settings.concurrencies))
    for label, by_c in pairs.items():
        cells = [
            f"{f'{w.server_cpu_us:.0f} / {o.server_cpu_us:.0f}':>14}" for w, o in by_c.values()
        ]
        print(f"{label:<46}" + "".join(cells))
    print(
        "\n'!' marks a cell where not every call answered OK (at c=64, a few calls refused "
        "RESOURCE_EXHAUSTED by admission: 16 threads, --max-inflight 14)."
    )
    print(
        "load average (1/5/15 min) before the run: {:.2f} {:.2f} {:.2f}; after: "
        "{:.2f} {:.2f} {:.2f} ({} CPUs)".format(*load_before, *os.getloadavg(), os.cpu_count())
    )
    return 0 if verified else 1


def measure_placement_alone(settings: BenchSettings) -> int:
    """`--placement`: the digits model, then the placement rows (e) and nothing else."""
    from serve_placement import measure_placement

    ensure_h2load()
    with tempfile.TemporaryDirectory(prefix="bnserve-bench-") as scratch_name:
        scratch = Path(scratch_name)
        print(
            f"training and exporting a digits model {settings.hidden} (2 epochs) …", file=sys.stderr
        )
        model = build_model(scratch, settings.hidden)
        return 0 if measure_placement(model, example_row(model), settings, scratch) else 1


if __name__ == "__main__":
    sys.exit(main())
