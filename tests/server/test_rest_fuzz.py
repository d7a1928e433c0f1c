"""The HTTP/REST transport under bad input, as test_fuzz.py does for gRPC: hypothesis sends every
route random and mutated requests over raw sockets (methods, paths, headers, JSON, Triton's
binary tensors, feedback bodies, X-Request-Id headers, bodies cut short of their
Content-Length); no answer is a 500, no traceback reaches the log, and health answers
throughout. The soak (slow) checks memory stays flat.

The normal suite sends 300 requests; `-m slow` sends 10,000, then the soak.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles
from tests.support.server_process import ServerProcess, free_port

SHORT_EXAMPLES = 300
SLOW_EXAMPLES = 10_000
FEATURES = np.linspace(-2, 2, NUM_FEATURES, dtype=np.float32)
BODY_TIMEOUT_S = 1.0  # the server's --request-timeout-s here: a cut body is answered quickly
ANSWER_TIMEOUT_S = 10.0

VALID_JSON = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, NUM_FEATURES],
                 "data": FEATURES.tolist()}],
     "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}, {"name": "label"}]}
).encode()  # fmt: skip
_BINARY_HEADER = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, NUM_FEATURES],
                 "parameters": {"binary_data_size": NUM_FEATURES * 4}}],
     "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
).encode()  # fmt: skip
VALID_BINARY = _BINARY_HEADER + FEATURES.tobytes()
VALID_FEEDBACK = json.dumps({"answers": [{"id": "a", "row": 0, "label": CLASS_NAMES[1]}]}).encode()
ROUTES = [
    ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2"),
    ("GET", "/v2/models/stats"), ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/iris/load"), ("POST", "/v2/repository/models/iris/unload"),
    ("GET", "/v2/models/iris"), ("GET", "/v2/models/iris/ready"),
    ("GET", "/v2/models/iris/config"), ("GET", "/v2/models/iris/stats"),
    ("GET", "/v2/models/iris/drift"), ("POST", "/v2/models/iris/infer"),
    ("GET", "/v2/models/iris/versions/1"), ("POST", "/v2/models/iris/versions/1/infer"),
    ("POST", "/v2/models/nope/infer"), ("GET", "/v2/models/iris/versions/9/ready"),
    ("POST", "/v2/models/iris/feedback"), ("GET", "/v2/models/iris/quality"),
]  # fmt: skip
# An X-Request-Id header's value: any latin-1 text a client could send (the answer's header
# carries only printable ASCII).
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
PRINTABLE = st.characters(min_codepoint=33, max_codepoint=126)
TOKEN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-ABCXYZ019"), min_size=1, max_size=20)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """valid with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and data:
            del data[position]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(the request's bytes, whether its body is cut short of its Content-Length)."""
    method, path = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]) | TOKEN)
    if draw(st.integers(0, 9)) == 0:
        path = draw(mutated(path.encode())).decode("latin-1")
        path = "/" + "".join(c for c in path if 32 < ord(c) < 127)
    binary = draw(st.booleans())
    feedback = path.endswith("/feedback")
    body = draw(
        st.sampled_from([VALID_JSON, VALID_BINARY, VALID_FEEDBACK, b""])
        | mutated(VALID_BINARY if binary else VALID_FEEDBACK if feedback else VALID_JSON)
        | JSON_VALUES.map(lambda value: json.dumps(value).encode())
        | st.binary(max_size=200)
    )
    headers = {"Host": "bnserve", "Connection": "close"}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "application/octet-stream", "text/plain"])
            | st.text(PRINTABLE, max_size=30)
        )
    if binary:
        headers["Inference-Header-Content-Length"] = draw(
            st.sampled_from([str(len(_BINARY_HEADER)), "0", "-1", "99999999999", "abc"])
            | st.integers(-10, len(body) + 10).map(str)
        )
    if draw(st.integers(0, 3)) == 0:
        headers["X-Request-Id"] = draw(HEADER_TEXT)
    for name, value in draw(
        st.dictionaries(TOKEN, st.text(PRINTABLE, max_size=40), max_size=4)
    ).items():
        headers[name] = value
    cut = draw(st.booleans()) and len(body) > 0
    sent = body[: draw(st.integers(0, len(body) - 1))] if cut else body
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + sent, cut


def _send(port: int, request: bytes, cut: bool) -> int | None:
    """The answer's status, or None when the server closed without one (fine for a request cut
    short, since its client gave up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(request)
        if cut:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    if not answer:
        return None
    status_line = answer.split(b"\r\n", 1)[0].split()
    assert len(status_line) >= 2 and status_line[0] in (b"HTTP/1.0", b"HTTP/1.1"), answer[:200]
    return int(status_line[1])


def _live(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT_S)
    try:
        connection.request("GET", "/v2/health/live")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture(scope="module")
def rest_server(
    test_models: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    http_port = free_port()
    capture = tmp_path_factory.mktemp("rest-fuzz") / "capture"  # feedback and quality do work
    server = ServerProcess(
        ["--model", str(test_models.classification), "--name", "iris",
         "--http-port", str(http_port), "--request-timeout-s", str(BODY_TIMEOUT_S),
         "--capture-dir", str(capture)]
    )  # fmt: skip
    server.wait_ready()
    server.http_port = http_port
    yield server
    assert server.stop() == 0


def _fuzz(server: ServerProcess, examples: int) -> None:
    seen: set[int | None] = set()
    sent = [0]

    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(request=requests())
    def fuzz_one(request: tuple[bytes, bool]) -> None:
        status = _send(server.http_port, *request)
        assert status is not None or request[1], request[0][:300]
        # 501: model control is not offered (--model-control); 503/504: not ready, timeout
        assert status is None or status < 500 or status in (501, 503, 504), (
            status,
            request[0][:300],
        )
        seen.add(status)
        sent[0] += 1
        if sent[0] % 10 == 0:
            assert _live(server.http_port) == 200

    fuzz_one()
    assert 200 in seen and 400 in seen  # valid requests were among them, and answered
    assert server.process.poll() is None
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_rest_fuzz_short(rest_server: ServerProcess) -> None:
    _fuzz(rest_server, SHORT_EXAMPLES)


@pytest.mark.slow
def test_rest_fuzz_10k(rest_server: ServerProcess) -> None:
    _fuzz(rest_server, SLOW_EXAMPLES)


def _infer(connection: http.client.HTTPConnection, binary: bool) -> None:
    headers = {"Content-Type": "application/json"}
    body = VALID_JSON
    if binary:
        headers = {"Inference-Header-Content-Length": str(len(_BINARY_HEADER))}
        body = VALID_BINARY
    connection.request("POST", "/v2/models/iris/infer", body, headers)
    response = connection.getresponse()
    response.read()
    assert response.status == 200


@pytest.mark.slow
def test_rest_soak_memory_stays_flat(rest_server: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", rest_server.http_port, timeout=30)
    try:
        for call in range(5_000):  # warm-up: allocator pools, caches, statistics
            _infer(connection, binary=call % 2 == 1)
        rss_after_warm_up = rest_server.rss_bytes()
        for call in range(50_000):
            _infer(connection, binary=call % 2 == 1)
        rss_after_all = rest_server.rss_bytes()
    finally:
        connection.close()
    growth = rss_after_all / rss_after_warm_up - 1
    assert growth < 0.05, (
        f"RSS {rss_after_warm_up / 2**20:.1f} MiB after 5,000 REST calls, "
        f"{rss_after_all / 2**20:.1f} MiB after 55,000 ({growth:+.2%})"
    )
