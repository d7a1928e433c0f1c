"""The Prometheus endpoint: GET /metrics and nothing else, on a bounded number of threads.

prometheus-client's own `start_http_server` answers every path with the metrics (a readiness
probe pointed at it by mistake always passes) and starts one thread per connection without a
cap (300 half-open requests made 313 threads). This server answers 404 off /metrics, serves at
most `max_connections` connections at once (503 beyond), and gives a slow client
`timeout_s` to send its request.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import socketserver
import threading
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    server: MetricsHTTPServer
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        # A half-open request cannot hold a thread.
        self.connection.settimeout(self.server.read_timeout_s)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != METRICS_PATH:
            self._answer(404, b"not found: metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        self._answer(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not worth a log line each


class MetricsHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP server capped at `max_connections` handler threads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        max_connections: int = 16,
        read_timeout_s: float = 5.0,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.read_timeout_s = read_timeout_s  # seconds a client has for each read
        self.refused = 0  # connections answered 503 because every thread was busy
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _MetricsHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Retry-After: 1\r\n\r\n"
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_metrics(
    host: str,
    port: int,
    registry: CollectorRegistry,
    max_connections: int = 16,
    read_timeout_s: float = 5.0,
) -> tuple[MetricsHTTPServer, threading.Thread]:
    """Start the endpoint on host:port (0: a free port) in a daemon thread."""
    server = MetricsHTTPServer((host, port), registry, max_connections, read_timeout_s)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
