"""`bnserve predict` against a --target that is no gRPC server: exit 2 and one line that says so
(exit 1 is kept for a server's own answer, README: Exit codes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bnserve.server.app import Server
from bnserve.server.clients.predict import main
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import ModelFiles
from tests.support.server_process import free_port


@pytest.fixture(scope="module")
def rest_server(test_models: ModelFiles) -> Iterator[Server]:
    server = start_server(
        ServerSettings(workers=4, max_inflight=2), {"iris": test_models.classification}, http=True
    )
    yield server
    server.stop(0)


def _predict(target: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["--target", target, "--features", "1,2,3,4", "--timeout", "20"])
    return code, capsys.readouterr().err.splitlines()


def test_nothing_listening_exits_2_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    code, lines = _predict(target, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"bnserve predict: error: nothing is listening at {target} ")
    assert "answered" not in lines[0]


def test_no_port_says_grpc_took_443(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BNSERVE_PORT", raising=False)
    code, lines = _predict("127.0.0.1", capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "nothing is listening at 127.0.0.1: with no port gRPC uses 443" in lines[0]
    assert "--target 127.0.0.1:50051" in lines[0]


def test_a_url_is_refused_before_any_call(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BNSERVE_PORT", raising=False)
    code, lines = _predict("http://127.0.0.1:8000/v2", capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        "bnserve predict: error: --target 'http://127.0.0.1:8000/v2' is a URL; give the gRPC "
        "server's HOST:PORT, not an HTTP address (e.g. --target 127.0.0.1:50051, bnserve "
        "serve's default port)"
    )


def test_the_rest_port_is_named_as_not_grpc(
    rest_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{rest_server.http_port}"
    code, lines = _predict(target, capsys)
    # the in-process server's own log lines may land on this stderr too: the client's are ours
    lines = [line for line in lines if line.startswith("bnserve predict:")]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"bnserve predict: error: {target} does not speak gRPC")
    assert "HTTP/REST or metrics port" in lines[0]


def test_a_server_answer_still_exits_1(
    rest_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--target", f"127.0.0.1:{rest_server.port}", "--features", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "answered INVALID_ARGUMENT" in err
