"""The metrics endpoint's own server (metrics_http.py): /metrics only, capped threads."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from bnserve.server.observability.metrics_http import serve_metrics


@pytest.fixture()
def endpoint():
    registry = CollectorRegistry()
    Counter("probe_calls", "A probe counter.", registry=registry).inc(3)
    server, thread = serve_metrics("127.0.0.1", 0, registry, max_connections=4, read_timeout_s=60)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_metrics_on_metrics_and_404_everywhere_else(endpoint) -> None:
    with urllib.request.urlopen(_url(endpoint, "/metrics"), timeout=10) as answer:
        assert answer.status == 200 and b"probe_calls_total 3.0" in answer.read()
    for path in ("/", "/v2/health/ready", "/metricsx"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(_url(endpoint, path), timeout=10)
        assert missing.value.code == 404
        missing.value.close()


def test_half_open_requests_take_at_most_the_cap_of_threads(endpoint) -> None:
    threads_before = threading.active_count()
    half_open = []
    try:
        for _ in range(20):  # requests that never finish their headers
            connection = socket.create_connection(endpoint.server_address, timeout=30)
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            half_open.append(connection)
        # The first 4 hold the 4 handler threads; each later one is answered 503 at once.
        for connection in half_open[4:]:
            assert connection.recv(64).startswith(b"HTTP/1.0 503 Service Unavailable")
        assert endpoint.refused == 16
        assert threading.active_count() <= threads_before + 4
    finally:
        for connection in half_open:
            connection.close()
