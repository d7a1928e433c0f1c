"""What the operations layer costs per call: metrics, token auth, request decoding.

1. In-process: the interceptors' own work per call (handler lookup wrapper, timing, counter and
   histogram updates; sha256 and constant-time compare of a token), in µs, against the bare
   handler call.
2. End to end: the same h2load load (single-example Predict, concurrency 8) against
   `python -m bnserve.server` with metrics off, metrics on, and metrics + tokens, interleaved
   rounds, server pinned to one core and h2load to the other; requests/s and the ratio to
   metrics off.

Usage: python bench/metrics_overhead.py [--rounds 3] [--requests 20000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support
from bnserve.server.grpc.decoding import RequestDecodingInterceptor
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.observing import ObservabilityInterceptor
from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.security.auth import TokenAuthInterceptor, load_token_digests
from tests.support.model_builder import NUM_FEATURES, build_model

METHOD = "/bnserve.v1.Predictor/Predict"
TOKEN = "bench-token-0123456789abcdef"


class _Context:
    """Just enough of grpc.ServicerContext for the interceptors' wrappers."""

    def code(self) -> None:
        return None


def _per_call_us(interceptors: list[grpc.ServerInterceptor], calls: int) -> float:
    request = pb.PredictRequest(features=np.zeros(NUM_FEATURES, np.float32)).SerializeToString()
    handler = grpc.unary_unary_rpc_method_handler(
        lambda parsed, context: parsed, request_deserializer=pb.PredictRequest.FromString
    )
    details = SimpleNamespace(
        method=METHOD, invocation_metadata=(("authorization", f"Bearer {TOKEN}"),)
    )
    context = _Context()

    def lookup(_: object) -> grpc.RpcMethodHandler:
        return handler

    continuation = lookup
    for interceptor in reversed(interceptors):
        continuation = (
            lambda inner, outer: lambda call_details: outer.intercept_service(inner, call_details)
        )(continuation, interceptor)
    start = time.perf_counter()
    for _ in range(calls):
        resolved = continuation(details)
        if resolved.request_deserializer is not None:
            resolved.unary_unary(resolved.request_deserializer(request), context)
        else:
            resolved.unary_unary(request, context)
    return (time.perf_counter() - start) / calls * 1e6


def in_process(calls: int) -> None:
    metrics = ObservabilityInterceptor(CallObserver(ServerMetrics()))
    auth = TokenAuthInterceptor(load_token_digests("", {"BNSERVE_AUTH_TOKEN": TOKEN}))
    decoding = RequestDecodingInterceptor()
    rows = [
        ("bare handler (grpc's own parse)", []),
        ("request decoding", [decoding]),
        ("metrics + decoding", [metrics, decoding]),
        ("metrics + tokens + decoding", [metrics, auth, decoding]),
    ]
    _per_call_us([metrics, auth, decoding], 2000)  # warm up
    print(f"in-process, {calls:,} calls each: µs per call (median of 3)")
    base = None
    for label, chain in rows:
        cost = statistics.median(_per_call_us(chain, calls) for _ in range(3))
        base = cost if base is None else base
        print(f"  {label:34s} {cost:7.2f} µs   (+{cost - base:5.2f} µs over bare)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(
    model: Path, extra: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    command = [
        sys.executable, "-m", "bnserve.server", "--model", str(model), "--port", str(port),
        "--workers", "16", "--max-inflight", "12", "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return process, port
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not become ready within 60 s")


def _h2load(port: int, body: Path, requests: int, headers: list[str]) -> float:
    command = ["h2load", "-n", str(requests), "-c", "1", "-m", "8", "-d", str(body),
               "-H", "content-type: application/grpc", "-H", "te: trailers"]  # fmt: skip
    for header in headers:
        command += ["-H", header]
    command.append(f"http://127.0.0.1:{port}{METHOD}")
    if shutil.which("taskset"):
        command = ["taskset", "-c", "1", *command]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    succeeded = int(re.search(r"(\d+) succeeded", output).group(1))
    if succeeded != requests:
        raise SystemExit(f"h2load: only {succeeded} of {requests} requests succeeded:\n{output}")
    return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output).group(1))


def end_to_end(rounds: int, requests: int) -> None:
    if not shutil.which("h2load"):
        print("end to end: skipped (needs h2load: apt-get install nghttp2-client)")
        return
    with tempfile.TemporaryDirectory() as directory:
        model = Path(directory) / "iris.onnx"
        model.write_bytes(build_model("classification", seed=1)[0].SerializeToString())
        message = pb.PredictRequest(features=np.linspace(-1, 1, NUM_FEATURES, dtype=np.float32))
        payload = message.SerializeToString()
        body = Path(directory) / "body.bin"
        body.write_bytes(b"\0" + len(payload).to_bytes(4, "big") + payload)
        variants = {
            "metrics off": (["--metrics-port", "0"], {}, []),
            "metrics on": (["--metrics-port", str(_free_port())], {}, []),
            "metrics + tokens": (
                ["--metrics-port", str(_free_port())],
                {"BNSERVE_AUTH_TOKEN": TOKEN},
                [f"authorization: Bearer {TOKEN}"],
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in variants}
        servers = {}
        try:
            for name, (flags, env, _) in variants.items():
                servers[name] = _start_server(
                    model, flags, {**os.environ, "BNSERVE_HTTP_PORT": "0", **env}
                )
            for _ in range(rounds):  # interleaved, so drifting machine load hits all alike
                for name, (_, _, headers) in variants.items():
                    _h2load(servers[name][1], body, requests // 10, headers)  # warm
                    results[name].append(_h2load(servers[name][1], body, requests, headers))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait()
    print(f"end to end, h2load Predict at concurrency 8, {requests:,} calls × {rounds} rounds:")
    base = statistics.median(results["metrics off"])
    for name, rates in results.items():
        median = statistics.median(rates)
        print(f"  {name:18s} {median:8.0f} req/s   ratio {median / base:5.3f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=100_000, help="in-process calls per row")
    args = parser.parse_args(argv)
    in_process(args.calls)
    end_to_end(args.rounds, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
