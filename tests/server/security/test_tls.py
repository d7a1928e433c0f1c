"""TLS on the gRPC port against a real server process: served with the CA, refused without;
with a client CA, refused without a client certificate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.security.tls import TlsConfigError, server_credentials
from tests.support.certificates import Pki, make_pki
from tests.support.model_builder import NUM_FEATURES, ModelFiles
from tests.support.server_process import ServerProcess

FEATURES = np.linspace(-1, 1, NUM_FEATURES, dtype=np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _predict(channel: grpc.Channel) -> pb.PredictResponse:
    stub = predictor_pb2_grpc.PredictorStub(channel)
    return stub.Predict(pb.PredictRequest(features=FEATURES), timeout=10)


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        _predict(channel)
    return refused.value.code()


def _credentials(ca: Path, client: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    chain = (client[1].read_bytes(), client[0].read_bytes()) if client else (None, None)
    return grpc.ssl_channel_credentials(ca.read_bytes(), *chain)


def test_tls_served_with_the_ca_refused_without(pki: Pki, test_models: ModelFiles) -> None:
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    )  # fmt: skip
    try:
        server.wait_ready()
        assert "ready (TLS)" in server.log()
        with grpc.secure_channel(server.target, _credentials(pki.ca_cert)) as channel:
            assert _predict(channel).class_name
        with grpc.insecure_channel(server.target) as channel:
            assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(server.target, _credentials(pki.other_ca_cert)) as channel:
            assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_client_certificate_required_with_client_ca(pki: Pki, test_models: ModelFiles) -> None:
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
         "--tls-client-ca", str(pki.ca_cert)]
    )  # fmt: skip
    try:
        server.wait_ready()
        assert "ready (TLS with client certificates)" in server.log()
        with grpc.secure_channel(server.target, _credentials(pki.ca_cert)) as channel:
            assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
        client = (pki.client_cert, pki.client_key)
        with grpc.secure_channel(server.target, _credentials(pki.ca_cert, client)) as channel:
            assert _predict(channel).class_name
    finally:
        assert server.stop() == 0


def test_unusable_tls_files_named_at_start_up(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    cases = [
        ((str(pki.server_cert), "", ""), "tls_cert and tls_key go together"),
        (("", "", str(pki.ca_cert)), "tls_client_ca needs tls_cert and tls_key"),
        ((str(not_pem), str(pki.server_key), ""), f"tls_cert {not_pem}: not a PEM file"),
        ((str(tmp_path / "nope.pem"), str(pki.server_key), ""), "nope.pem: cannot read it"),
        ((str(pki.server_cert), str(pki.client_key), ""), "are not a matching PEM certificate"),
        ((str(pki.server_cert), str(pki.server_key), str(pki.server_key)), "not a PEM CA"),
    ]
    for (cert, key, ca), message in cases:
        with pytest.raises(TlsConfigError, match=message):
            server_credentials(cert, key, ca)
    assert server_credentials("", "", "") is None


def test_predict_client_with_ca_and_token(pki: Pki, test_models: ModelFiles, tmp_path: Path):
    token = "client-token-0123456789abcdef"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
         "--auth-token-file", str(token_file)]
    )  # fmt: skip
    features = ",".join(str(value) for value in FEATURES)
    try:
        server.wait_ready()
        base = [sys.executable, "-m", "bnserve.cli", "predict", "--target", server.target,
                f"--features={features}", "--timeout", "10"]  # fmt: skip
        env = {key: value for key, value in os.environ.items() if key != "BNSERVE_AUTH_TOKEN"}

        def predict(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*base, *extra], capture_output=True, text=True, env=env, timeout=60
            )

        served = predict("--tls-ca", str(pki.ca_cert), "--token-file", str(token_file))
        assert served.returncode == 0, served.stderr
        assert served.stdout.strip()
        no_token = predict("--tls-ca", str(pki.ca_cert))
        assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
        no_ca = predict("--token-file", str(token_file))
        # plaintext to a TLS port never reaches the server: the client's problem (exit 2)
        assert no_ca.returncode == 2 and "closed the connection before any answer" in no_ca.stderr
    finally:
        assert server.stop() == 0
    assert token not in server.log()


def test_failed_handshakes_are_logged_throttled(pki: Pki, test_models: ModelFiles) -> None:
    import socket

    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    )  # fmt: skip
    try:
        server.wait_ready()
        for _ in range(200):  # plaintext HTTP/1.1 against the TLS port: each handshake fails
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
                connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                connection.recv(64)  # the server closes it after the failed handshake
        with grpc.secure_channel(server.target, _credentials(pki.ca_cert)) as channel:
            assert _predict(channel).class_name  # and it goes on serving
    finally:
        assert server.stop() == 0
    handshake_lines = [line for line in server.lines if "Handshake failed" in line]
    assert 1 <= len(handshake_lines) <= 3, handshake_lines  # one per 10 s, not one per client
    assert "grpc.core: TLS handshake failed: Handshake failed with error" in handshake_lines[0]
