"""A raw HTTP/2 client for attack tests: it opens gRPC streams whose request message never
comes (or comes with a lying length prefix), and answers SETTINGS and PING so the server sees a
healthy connection. Runs its socket loop on a thread; `close()` ends it."""

from __future__ import annotations

import socket
import ssl
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class StallingConnection:
    """One TCP (optionally TLS) connection that holds gRPC streams open without their message."""

    def __init__(self, host: str, port: int, *, tls_context: ssl.SSLContext | None = None) -> None:
        raw = socket.create_connection((host, port), timeout=10)
        if tls_context is not None:
            raw = tls_context.wrap_socket(raw, server_hostname="localhost")
        self.sock = raw
        self.sock.settimeout(0.2)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self._lock = threading.Lock()
        self.closed_streams: dict[int, int | None] = {}  # stream id -> grpc-status (None: reset)
        self.connection_closed = threading.Event()
        self._stop = threading.Event()
        self._flush()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def open_stream(self, path: str, *, token: str | None = None) -> int:
        """Send the HEADERS of a gRPC call on `path` and no message; returns the stream id."""
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token is not None:
            headers.append(("authorization", f"Bearer {token}"))
        with self._lock:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, headers)
            self._flush()
        return stream_id

    def send_length_prefix(self, stream_id: int, announced: int) -> None:
        """Send a gRPC message header announcing `announced` bytes (and none of them)."""
        with self._lock:
            self.h2.send_data(stream_id, b"\x00" + announced.to_bytes(4, "big"))
            self._flush()

    def send_message(self, stream_id: int, message: bytes) -> None:
        """Send one whole gRPC message (length prefix and bytes), keeping the stream open."""
        with self._lock:
            self.h2.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message)
            self._flush()

    def send_as_much_as_allowed(self, stream_id: int, chunk: bytes) -> int:
        """Send chunk-sized DATA frames while the flow-control window allows; returns bytes sent."""
        sent = 0
        with self._lock:
            while True:
                try:
                    window = self.h2.local_flow_control_window(stream_id)
                except h2.exceptions.StreamClosedError:
                    return sent
                size = min(window, len(chunk), self.h2.max_outbound_frame_size)
                if size <= 0:
                    break
                try:
                    self.h2.send_data(stream_id, chunk[:size])
                except h2.exceptions.StreamClosedError:
                    return sent
                sent += size
                self._flush()
        return sent

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError:
                break
            if not data:
                break
            with self._lock:
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._record(event)
                try:
                    self._flush()
                except OSError:
                    break
        self.connection_closed.set()

    def _record(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
            status = dict(event.headers).get(b"grpc-status")
            if status is not None:
                self.closed_streams[event.stream_id] = int(status)
        elif isinstance(event, h2.events.StreamReset):
            self.closed_streams.setdefault(event.stream_id, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
