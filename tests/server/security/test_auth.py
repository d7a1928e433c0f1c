"""Bearer tokens: parsing and constant-time matching, then a real server process: refused
without a valid token, served with one, health open, rotation on SIGHUP, no token in any log."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.grpc.servicers.unimplemented import UnimplementedHandler
from bnserve.server.security.auth import (
    TOKEN_ENV,
    TokenAuthInterceptor,
    TokenConfigError,
    bearer_token,
    load_token_digests,
)
from tests.support.model_builder import NUM_FEATURES, ModelFiles
from tests.support.server_process import ServerProcess
from tests.support.waiting import wait_until

FILE_TOKENS = ["file-token-0123456789abcdef", "rotating-token-0123456789ab"]
ENV_TOKEN = "env-token-fedcba9876543210"
NEW_TOKEN = "new-token-after-sighup-000111"
FEATURES = np.linspace(-1, 1, NUM_FEATURES, dtype=np.float32)


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x-other", "1"), ("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([]) is None and bearer_token(None) is None


def test_tokens_from_file_and_env(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotation: old and new\n{FILE_TOKENS[0]}\n\n{FILE_TOKENS[1]}\n")
    auth = TokenAuthInterceptor(load_token_digests(str(token_file), {TOKEN_ENV: ENV_TOKEN}))
    for token in [*FILE_TOKENS, ENV_TOKEN]:
        assert auth.accepts(token)
    for token in [None, "", FILE_TOKENS[0][:-1], FILE_TOKENS[0] + "x", "# rotation"]:
        assert not auth.accepts(token)
    assert load_token_digests("", {}) == ()


class _Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def test_a_flood_of_refused_calls_logs_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = TokenAuthInterceptor(load_token_digests("", {TOKEN_ENV: ENV_TOKEN}))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    method = "/bnserve.v1.Predictor/Predict"
    with caplog.at_level(logging.WARNING, logger="bnserve.server.security.auth"):
        for _ in range(500):
            denying = auth.intercept_service(lambda details: handler, _Details(method, ()))
            assert denying is not handler
        served = auth.intercept_service(
            lambda details: handler, _Details(method, (("authorization", f"Bearer {ENV_TOKEN}"),))
        )
    assert served is handler
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [f"refused {method}: no bearer token (UNAUTHENTICATED)"]


def test_a_method_nobody_serves_answers_unimplemented_without_a_token_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bug: each invented method name, refused for its missing token, became a metric label
    and a log-throttle key (unbounded growth from one unauthenticated client)."""
    auth = TokenAuthInterceptor(load_token_digests("", {TOKEN_ENV: ENV_TOKEN}))
    unimplemented = UnimplementedHandler(["bnserve.v1.Predictor"])
    with caplog.at_level(logging.WARNING, logger="bnserve.server.security.auth"):
        for index in range(200):
            details = _Details(f"/invented.Service/Method{index}", ())
            handler = unimplemented.service(details)
            assert auth.intercept_service(unimplemented.service, details) is handler
    assert caplog.records == []
    assert auth._refusal_lines._next_line_at == {}  # no throttle key per invented name


@pytest.mark.parametrize(
    ("content", "environ", "message"),
    [
        ("# only a comment\n", {}, "holds no token"),
        ("short\n", {}, "line 1: a token must be at least 16"),
        (None, {TOKEN_ENV: "has space in it 0123"}, f"environment variable {TOKEN_ENV}"),
    ],
)
def test_unusable_tokens_refused_without_echoing_them(
    tmp_path: Path, content: str | None, environ: dict[str, str], message: str
) -> None:
    token_file = ""
    if content is not None:
        token_file = str(tmp_path / "tokens")
        Path(token_file).write_text(content)
    with pytest.raises(TokenConfigError, match=message) as error:
        load_token_digests(token_file, environ)
    assert (content or environ[TOKEN_ENV]).strip() not in str(error.value)
    with pytest.raises(TokenConfigError, match="cannot read it"):
        load_token_digests(str(tmp_path / "missing"), {})


def _metadata(token: str | None) -> list[tuple[str, str]]:
    return [] if token is None else [("authorization", f"Bearer {token}")]


def _calls(channel: grpc.Channel, token: str | None) -> dict[str, grpc.StatusCode]:
    """Every kind of call (unary, stream, v2, reflection) with token; name → status code."""
    predictor = predictor_pb2_grpc.PredictorStub(channel)
    inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    metadata = _metadata(token)
    calls = {
        "Predict": lambda: predictor.Predict(
            pb.PredictRequest(features=FEATURES), metadata=metadata, timeout=10
        ),
        "PredictStream": lambda: list(
            predictor.PredictStream(
                iter([pb.PredictRequest(features=FEATURES)]), metadata=metadata, timeout=10
            )
        ),
        "ModelInfo": lambda: predictor.ModelInfo(
            pb.ModelInfoRequest(), metadata=metadata, timeout=10
        ),
        "ServerLive": lambda: inference.ServerLive(
            v2.ServerLiveRequest(), metadata=metadata, timeout=10
        ),
        "Reflection": lambda: list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                metadata=metadata,
                timeout=10,
            )
        ),
    }
    codes = {}
    for name, call in calls.items():
        try:
            call()
            codes[name] = grpc.StatusCode.OK
        except grpc.RpcError as error:
            codes[name] = error.code()
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                assert "authorization: Bearer <token>" in error.details()
    return codes


def test_tokens_required_health_open_rotation_and_never_logged(
    tmp_path: Path, test_models: ModelFiles
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("\n".join(FILE_TOKENS) + "\n")
    server = ServerProcess(
        ["--model", str(test_models.classification),
         "--auth-token-file", str(token_file), "--log-level", "DEBUG", "--log-format", "json"],
        env={TOKEN_ENV: ENV_TOKEN},
    )  # fmt: skip
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as channel:
            for token in [None, "wrong-token-0123456789abcdef", FILE_TOKENS[0][:-1]]:
                assert set(_calls(channel, token).values()) == {unauthenticated}, token
            for token in [*FILE_TOKENS, ENV_TOKEN]:
                assert set(_calls(channel, token).values()) == {grpc.StatusCode.OK}, token
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            invented = channel.unary_unary("/invented.Service/Method")
            with pytest.raises(grpc.RpcError) as refused:
                invented(b"", timeout=10)  # no token: a method nobody serves, not a refusal
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

            token_file.write_text(f"{FILE_TOKENS[1]}\n{NEW_TOKEN}\n")  # rotate: drop the first
            server.signal(signal.SIGHUP)
            wait_until(
                lambda: _calls(channel, NEW_TOKEN)["Predict"] == grpc.StatusCode.OK,
                "the new token accepted after SIGHUP",
                20,
                interval_s=0.05,
            )
            assert _calls(channel, FILE_TOKENS[0])["Predict"] == unauthenticated
            assert _calls(channel, FILE_TOKENS[1])["Predict"] == grpc.StatusCode.OK
    finally:
        assert server.stop() == 0
    lines = server.lines
    assert any("refused /bnserve.v1.Predictor/Predict" in line for line in lines)
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(entry)
        for token in [*FILE_TOKENS, ENV_TOKEN, NEW_TOKEN, "wrong-token"]:
            assert token not in line
