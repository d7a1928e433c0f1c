"""server/clients/healthcheck.py: the image's HEALTHCHECK against real servers on free loopback
ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bnserve.server.app import Server
from bnserve.server.clients import healthcheck
from bnserve.server.settings import ServerSettings
from tests.support.certificates import Pki, make_pki
from tests.support.model_builder import ModelFiles
from tests.support.server_process import ServerProcess, free_port


def run_check(
    capsys: pytest.CaptureFixture[str], *argv: str, environ: dict[str, str] | None = None
) -> tuple[int, str]:
    exit_code = healthcheck.main(list(argv), environ or {})
    return exit_code, capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def unloaded_server() -> Iterator[Server]:
    """Started, listening, but with no model loaded: health answers NOT_SERVING."""
    server = Server.create(ServerSettings(host="127.0.0.1", port=0, metrics_port=0, http_port=0))
    server.start()
    yield server
    server.stop(0)


def test_healthy_when_serving(server: Server, capsys: pytest.CaptureFixture[str]):
    exit_code, line = run_check(capsys, "--target", f"127.0.0.1:{server.port}")
    assert exit_code == 0
    assert line == f"healthy: 127.0.0.1:{server.port} (the server): SERVING"


def test_default_target_is_the_port_the_server_reads(
    server: Server, capsys: pytest.CaptureFixture[str]
):
    exit_code, line = run_check(capsys, environ={"BNSERVE_PORT": str(server.port)})
    assert exit_code == 0
    assert f"127.0.0.1:{server.port}" in line


def test_unhealthy_while_no_model_is_loaded(
    unloaded_server: Server, capsys: pytest.CaptureFixture[str]
):
    exit_code, line = run_check(capsys, "--target", f"127.0.0.1:{unloaded_server.port}")
    assert exit_code == 1
    assert line.startswith("unhealthy:") and line.endswith("NOT_SERVING")


def test_unhealthy_when_nothing_listens(capsys: pytest.CaptureFixture[str]):
    exit_code, line = run_check(capsys, "--target", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert exit_code == 1
    assert "UNAVAILABLE" in line or "DEADLINE_EXCEEDED" in line


def test_unknown_service_is_unhealthy(server: Server, capsys: pytest.CaptureFixture[str]):
    target = f"127.0.0.1:{server.port}"
    exit_code, line = run_check(capsys, "--target", target, "--service", "no.such.Service")
    assert exit_code == 1
    assert "NOT_FOUND" in line


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_mutual_tls_needs_the_ca_and_a_client_certificate(
    pki: Pki, test_models: ModelFiles, capsys: pytest.CaptureFixture[str]
):
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
         "--tls-client-ca", str(pki.ca_cert)]
    )  # fmt: skip
    try:
        server.wait_ready()
        plaintext, _ = run_check(capsys, "--target", server.target)
        assert plaintext == 1
        no_client_cert, _ = run_check(
            capsys, "--target", server.target, "--tls-ca", str(pki.ca_cert)
        )
        assert no_client_cert == 1
        exit_code, line = run_check(
            capsys, "--target", server.target, "--tls-ca", str(pki.ca_cert),
            "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
        )  # fmt: skip
        assert (exit_code, line.split()[-1]) == (0, "SERVING"), line
    finally:
        assert server.stop() == 0


def test_unreadable_tls_file_is_unhealthy_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    missing = tmp_path / "missing-ca.pem"
    exit_code, line = run_check(capsys, "--target", "127.0.0.1:1", "--tls-ca", str(missing))
    assert exit_code == 1
    assert str(missing) in line
