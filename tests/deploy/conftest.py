"""A small demo run (trained, exported) and a real server on it, shared by the deploy tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.py"
# Small enough to train in about a second; the accuracy bar is the real demo's business.
SMALL_NETWORK = ("--hidden", "32", "--epochs", "3", "--warmup-calls", "2")


@dataclass(frozen=True)
class DemoRun:
    out_dir: Path  # holds run/, model.onnx, server.log
    completed: subprocess.CompletedProcess[str]


def run_demo(out_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """scripts/demo.py on the small network, output captured."""
    command = [sys.executable, str(DEMO), "--out-dir", str(out_dir), *SMALL_NETWORK, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out_dir = tmp_path_factory.mktemp("demo")
    completed = run_demo(out_dir, "--min-accuracy", "0.5")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return DemoRun(out_dir, completed)


@pytest.fixture(scope="module")
def served_demo_model(small_demo: DemoRun) -> Iterator[str]:
    """`bnserve serve` on the small demo's model.onnx (a free loopback port); yields HOST:PORT."""
    port = free_loopback_port()
    command = [sys.executable, "-m", "bnserve_cli", "serve", "--port", str(port)]
    command += ["--model", str(small_demo.out_dir / "model.onnx")]
    log_path = small_demo.out_dir / "test-server.log"
    with log_path.open("wb") as log:
        # Metrics off: the default metrics port (9090) is shared by every server on the host.
        environment = {**os.environ, "BNSERVE_METRICS_PORT": "0"}
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_until_serving(f"127.0.0.1:{port}", server, log_path, deadline_s=60)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(
    target: str, server: subprocess.Popen[bytes], log_path: Path, deadline_s: float
) -> None:
    """Poll grpc.health.v1 until SERVING; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + deadline_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"server exited ({server.returncode}):\n{log_path.read_text()}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.05)
    pytest.fail(f"server not SERVING within {deadline_s} s:\n{log_path.read_text()}")
