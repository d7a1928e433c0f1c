"""Fixtures: a small demo run (trained, exported, served once) and a real server on its model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.deploy_support import DemoRun, free_loopback_port, run_demo, wait_until_serving


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out_dir = tmp_path_factory.mktemp("demo")
    completed = run_demo(out_dir, "--min-accuracy", "0.5")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return DemoRun(out_dir, completed)


@pytest.fixture(scope="session")
def demo_http_port() -> int:
    """The HTTP/REST port of served_demo_model."""
    return free_loopback_port()


@pytest.fixture(scope="session")
def served_demo_model(small_demo: DemoRun, demo_http_port: int) -> Iterator[str]:
    """`bnserve serve` on the small demo's model.onnx (free loopback ports, HTTP on
    demo_http_port); yields the gRPC HOST:PORT."""
    port = free_loopback_port()
    command = [sys.executable, "-m", "bnserve.cli", "serve", "--port", str(port)]
    command += ["--model", str(small_demo.out_dir / "model.onnx")]
    log_path = small_demo.out_dir / "test-server.log"
    with log_path.open("wb") as log:
        # Metrics off: the default metrics port (9090) is shared by every server on the host.
        environment = {
            **os.environ,
            "BNSERVE_METRICS_PORT": "0",
            "BNSERVE_HTTP_PORT": str(demo_http_port),
        }
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_until_serving(f"127.0.0.1:{port}", server, log_path, deadline_s=60)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
