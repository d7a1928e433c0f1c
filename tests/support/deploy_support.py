"""Helpers for the deploy tests: running the demo, waiting for a server, reading the Dockerfile.

A plain module (not conftest.py), so test files import it by a name no other test dir uses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.waiting import poll

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


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(
    target: str, server: subprocess.Popen[bytes], log_path: Path, deadline_s: float
) -> None:
    """Poll grpc.health.v1 until SERVING; fail with the server's log if it exits or times out."""
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            if server.poll() is not None:
                pytest.fail(f"server exited ({server.returncode}):\n{log_path.read_text()}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False  # not listening yet
            return response.status == health_pb2.HealthCheckResponse.SERVING

        if not poll(serving, deadline_s, interval_s=0.05):
            pytest.fail(f"server not SERVING within {deadline_s} s:\n{log_path.read_text()}")


Instruction = tuple[str, str]  # (KEYWORD, arguments)


def parse_dockerfile(path: Path) -> list[Instruction]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def runtime_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last stage (the image that ships)."""
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[Instruction]) -> dict[str, str]:
    """ENV KEY=VALUE pairs of a stage (the KEY=VALUE form only)."""
    env: dict[str, str] = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in arguments.split())
    return env
