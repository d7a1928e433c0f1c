"""Connections that never finish (server/rest/connections.py and the gRPC connection options):
held HTTP connections past the cap are evicted or closed at the header deadline while gRPC and
REST health on fresh connections answer; an idle keep-alive connection, a trickling body and an
idle gRPC connection are closed at their deadlines; and with a low file limit, HTTP connections
cannot take the descriptors the gRPC port needs."""

from __future__ import annotations

import http.client
import re
import socket
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.h2_attacker import StallingConnection
from tests.support.model_builder import ModelFiles
from tests.support.server_process import ServerProcess, free_port

HALF_A_REQUEST = b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: bnserve\r\nContent-Le"
DEADLINE_S = 2.0  # the header, body and gRPC idle deadlines these tests set
KEEPALIVE_S = 4.0  # later than the header deadline, so each closes what it is meant to
CLOSED_WITHIN_S = 15.0  # a held connection must be closed by then (deadline + slack)


def _hold(port: int, count: int) -> list[socket.socket]:
    """count connections that each sent half a request line and stop there."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HALF_A_REQUEST)
        held.append(sock)
    return held


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """The server closed it (EOF, reset, or an answer ending in close) within within_s."""
    sock.settimeout(within_s)
    try:
        while data := sock.recv(65536):
            if b"Connection: close" not in data and b"HTTP/1.1" not in data:
                return False
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _rest_ready(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/v2/health/ready")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _closed_count(metrics: str, reason: str) -> float:
    match = re.search(rf'bnserve_http_connections_closed_total{{reason="{reason}"}} (\S+)', metrics)
    assert match, metrics
    return float(match.group(1))


@pytest.fixture()
def guarded_server(test_models: ModelFiles):
    http_port, metrics_port = free_port(), free_port()
    server = ServerProcess(
        ["--model", str(test_models.classification), "--name", "iris",
         "--http-port", str(http_port), "--metrics-port", str(metrics_port),
         "--http-max-connections", "20", "--http-header-timeout-s", str(DEADLINE_S),
         "--http-keepalive-timeout-s", str(KEEPALIVE_S), "--request-timeout-s", str(DEADLINE_S),
         "--grpc-max-connection-idle-s", str(DEADLINE_S)]
    )  # fmt: skip
    server.wait_ready()
    server.http_port, server.metrics_port = http_port, metrics_port
    yield server
    server.stop()


def test_held_connections_past_the_cap_leave_grpc_and_rest_health_answering(guarded_server):
    held = _hold(guarded_server.http_port, 40)  # twice the cap
    try:
        assert _grpc_health(guarded_server.port) == health_pb2.HealthCheckResponse.SERVING
        assert _rest_ready(guarded_server.http_port) == 200  # a fresh connection, at the cap
        assert all(_closed_by_server(sock, CLOSED_WITHIN_S) for sock in held)
    finally:
        for sock in held:
            sock.close()
    metrics = _scrape(guarded_server.metrics_port)
    assert _closed_count(metrics, "evicted") >= 20  # the oldest idle ones, as newer ones came
    assert _closed_count(metrics, "header_timeout") >= 1  # the rest, at the header deadline
    assert "bnserve_http_connections 0.0" in metrics


def test_idle_keepalive_and_trickling_body_are_closed_at_their_deadlines(guarded_server):
    port = guarded_server.http_port
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/v2/health/live")
    response = idle.getresponse()
    response.read()
    assert response.status == 200 and not response.will_close  # kept alive …
    assert _closed_by_server(idle.sock, CLOSED_WITHIN_S)  # … until the keep-alive deadline
    idle.close()

    with socket.create_connection(("127.0.0.1", port), timeout=10) as trickle:
        trickle.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: bnserve\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"inputs"'
        )
        trickle.settimeout(CLOSED_WITHIN_S)
        answer = trickle.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 2 s" in answer


def test_an_idle_grpc_connection_is_closed(guarded_server):
    connection = StallingConnection("127.0.0.1", guarded_server.port)
    try:
        assert connection.connection_closed.wait(CLOSED_WITHIN_S)  # GOAWAY after the idle time
    finally:
        connection.close()


def test_http_cannot_take_the_descriptors_grpc_needs(test_models: ModelFiles):
    # A file limit of 300 with 150 reserved: however many HTTP connections come, gRPC answers.
    http_port = free_port()
    server = ServerProcess(
        ["--model", str(test_models.classification), "--http-port", str(http_port),
         "--grpc-fd-reserve", "150", "--http-max-connections", "10000",
         "--http-header-timeout-s", "60"],
        file_limit=300,
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        server.wait_ready()
        cap = int(server.wait_for(r"HTTP connections capped at (\d+), not 10000").group(1))
        assert 16 <= cap <= 150
        held = _hold(http_port, 400)
        assert _grpc_health(server.port) == health_pb2.HealthCheckResponse.SERVING
        channels = [grpc.insecure_channel(server.target) for _ in range(20)]
        try:  # 20 more gRPC connections fit in the reserve
            for channel in channels:
                check = health_pb2_grpc.HealthStub(channel).Check
                assert check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        finally:
            for channel in channels:
                channel.close()
        assert _rest_ready(http_port) == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()
    assert "Too many open files" not in server.log()
