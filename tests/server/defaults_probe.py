"""Run by test_defaults.py inside a private network namespace (`unshare -rn`): start
`bnserve serve --model MODEL [--processes N]` with nothing else set, so on the literal default
ports (gRPC 50051, HTTP 8000, metrics 9090, which no other program holds in a fresh namespace),
probe every door, stop it with SIGTERM. Prints one line per door; exits 0 when all answered.

Usage: python defaults_probe.py MODEL.onnx PROCESSES
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_defaults
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.support
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_defaults import NAME, native_probabilities, rest_probabilities, scrape, v2_probabilities

from tests.support.server_process import ServerProcess

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
DEFAULT_PORTS = {"gRPC": 50051, "HTTP": 8000, "metrics": 9090}  # server/settings.py's defaults


def loopback_up() -> None:
    """A new network namespace has its loopback down; bring it up (we are root in it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(probe, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def main(model: str, processes: str) -> int:
    loopback_up()
    for name in [name for name in os.environ if name.startswith("BNSERVE_")]:
        del os.environ[name]  # the literal defaults: nothing set
    server = ServerProcess(
        ["--model", model, "--name", NAME, "--processes", processes], literal_defaults=True
    )
    try:
        ready = r"2 processes serving on port (\d+), ready" if processes == "2" else ""
        if ready:
            server.port = int(server.wait_for(ready, 120).group(1))
        else:
            server.wait_ready()
        assert server.port == DEFAULT_PORTS["gRPC"], server.port
        rows = np.random.default_rng(0).uniform(0, 16, (3, 64)).astype(np.float32)
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            print(f"health SERVING on {server.target}")
            native = native_probabilities(channel, rows, [])
            v2 = v2_probabilities(channel, rows, [])
        rest = rest_probabilities(DEFAULT_PORTS["HTTP"], rows, None, [])
        np.testing.assert_array_equal(native, v2)
        np.testing.assert_array_equal(native, rest)
        print(f"native Predict, v2 ModelInfer and REST on {DEFAULT_PORTS['HTTP']} agree")
        metrics = scrape(DEFAULT_PORTS["metrics"])
        predict = ("method", "bnserve.v1.Predictor/Predict")
        predicts = sum(
            value
            for (name, labels), value in metrics.items()
            if name == "bnserve_requests_total" and predict in labels
        )
        assert predicts == len(rows), predicts
        print(f"/metrics on {DEFAULT_PORTS['metrics']} counted {predicts:.0f} Predict calls")
    finally:
        code = server.stop()
    print(f"stopped with exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
